#!/usr/bin/env bash
# `make demo`: the whole chain on data the project generates itself, in ./demo_out.
#   1. synthesise a small raw KITTI dataset (native format) from the known 3D world
#   2. build shards + manifest with the Ray builder, 3. verify them, 4. draw one sample,
#   5. train a few steps with torchrun (2 CPU processes, gloo), 6. evaluate depth with the paper's protocol.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${DEMO_OUT:-demo_out}
export PYTHONPATH=$PWD RAY_AUTH_MODE=disabled OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n=== %s\n' "$*"; }

step "1/6 synthesise a KITTI-format world (2 drives x 10 frames) -> $OUT/raw_kitti"
$PY -m dynamo_depth synth kitti "$OUT/raw_kitti" --sequences 2 --frames 10 --seed 0

step "2/6 build shards in 2 worker processes (--workers 2) -> $OUT/shards"
$PY -m builders.kitti "$OUT/raw_kitti" "$OUT/shards" --workers 2 --shard-max-count 16 --quiet

step "3/6 verify the shards against their manifest"
$PY -m dynamo_depth verify "$OUT/shards"

step "4/6 draw one sample -> $OUT/sample.png"
$PY -m dynamo_depth show "$OUT/shards" --out "$OUT/sample.png"

step "5/6 train a few steps: torchrun (sockets on 127.0.0.1), 2 CPU processes (gloo), every phase -> $OUT/run"
if [[ -f train/main.py && -f configs/demo.yaml ]]; then
  GLOO_SOCKET_IFNAME=lo $PY -m train.loopback_torchrun --standalone --nproc_per_node 2 train/main.py --config configs/demo.yaml \
    --set data.url="$OUT/shards" train.run_dir="$OUT/run" train.threads=1
else
  echo "NOT BUILT YET: the trainer (train/main.py, configs/demo.yaml) is not in this checkout; skipping training."
fi

step "6/6 evaluate depth (paper protocol: per-image median scaling, 80 m cap, Garg crop) -> $OUT/eval"
CKPT="$OUT/run"  # the run folder: its checkpoints/last.json names the latest checkpoint
[[ -f "$CKPT/checkpoints/last.json" ]] || CKPT=""
if [[ -n "$CKPT" ]]; then
  $PY -m eval.depth --checkpoint "$CKPT" --data "$OUT/shards" --dataset kitti --out "$OUT/eval"
else
  echo "NOT BUILT YET: no checkpoint from step 5, so no model to evaluate."
fi

step "demo finished: see $OUT/ (sample.png, run/, eval/)"
