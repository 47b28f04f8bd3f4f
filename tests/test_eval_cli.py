"""End to end: eval CLIs on tiny shards written here (schema.encode + a plain tar) and .npz predictions.

Scene: original images 20x30 (H x W), training size 10x15. The "network" disparity is constant along
columns and linear along rows, d(r') = 0.02 + 0.01 r' at training row r'; bilinear upsampling
(align_corners=False) is exact for interior original rows r = 1..18, where the disparity is
0.02 + 0.01 ((r + 0.5) / 2 - 0.5). Ground truth z is set to 1 / that, so the map is a perfect prediction.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import tarfile

import numpy as np
import pytest
from PIL import Image

from dynamo_depth.shards.schema import SampleMeta, TripletSample, encode, make_key, matrix_tuple
from eval import depth as eval_depth
from eval import motion_segmentation as eval_motion
from eval import odometry as eval_odometry

ORIGINAL_HW = (20, 30)
TRAIN_HW = (10, 15)
SEQUENCE, CAMERA = "seq-a", "FRONT"


def _disparity_map() -> np.ndarray:
    rows = np.arange(TRAIN_HW[0], dtype=np.float64)[:, None]
    return np.repeat(0.02 + 0.01 * rows, TRAIN_HW[1], axis=1).astype(np.float32)


def _gt_depth(row: int) -> float:
    return 1.0 / (0.02 + 0.01 * ((row + 0.5) / 2 - 0.5))


def _jpeg(seed: int) -> bytes:
    rgb = (np.arange(TRAIN_HW[0] * TRAIN_HW[1] * 3).reshape(*TRAIN_HW, 3) * (seed + 1) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# (u, v, label): moving at columns <= 12 (motion map 1) except one missed at column 20; unlabeled
# points sit where the motion map says "moving" and must be ignored.
POINTS = [(2, 1, 1), (5, 4, 1), (20, 9, 1), (16, 2, 0), (18, 6, 0), (25, 10, 0), (28, 18, 2), (22, 14, 2),
          (17, 16, 0), (27, 3, 0), (3, 12, 3), (8, 15, 3)]


def _motion_mask() -> np.ndarray:
    """(20, 30) Waymo-style mask: moving rows 0-9 x cols 0-12, unlabeled rows 10-19 x cols 0-9, static movable
    rows 14-19 x cols 20-29, background elsewhere."""
    mask = np.zeros(ORIGINAL_HW, dtype=np.uint8)
    mask[:10, :13], mask[10:, :10], mask[14:, 20:] = 1, 3, 2
    return mask


def _sample(frame: int, *, dataset: str = "waymo") -> TripletSample:
    frames = (frame - 1, frame, frame + 1)
    poses = np.stack([np.eye(4) for _ in frames])
    poses[:, 2, 3] = frames  # 1 m forward per frame
    depth = np.array([[u, v, _gt_depth(v)] for u, v, _ in POINTS], dtype=np.float32)
    motion = np.array([label for _, _, label in POINTS], dtype=np.uint8)
    K = np.array([[10.0, 0, 7.5], [0, 10.0, 5.0], [0, 0, 1]])
    meta = SampleMeta(
        dataset=dataset, split="val", sequence=SEQUENCE, camera=CAMERA, frame_indices=frames,
        timestamps_us=tuple(100_000 * f for f in frames), original_size=ORIGINAL_HW,
        original_K=matrix_tuple(K * 2), ego_from_camera=matrix_tuple(np.eye(4)), builder="tests", builder_version="0",
    )
    return TripletSample(key=make_key(SEQUENCE, CAMERA, frame), images=tuple(_jpeg(frame + k) for k in range(3)),
                         K=K, poses=poses, depth=depth, meta=meta, motion=motion,
                         motion_mask=_motion_mask() if dataset == "waymo" else None)


def _write_tar(path, samples) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for member, data in sorted(encode(sample).items()):
                info = tarfile.TarInfo(f"{sample.key}.{member}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    samples = [_sample(f) for f in (1, 2, 3, 4, 10)]  # frames 1-4 form one run, 10 stands alone
    _write_tar(folder / "waymo-val-000000.tar", samples[:3])
    _write_tar(folder / "waymo-val-000001.tar", samples[3:])
    return folder, samples


def _save_npz(path, arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_depth_cli_perfect_and_scaled(shards, tmp_path, capsys):
    folder, samples = shards
    # the default --kind sigmoid maps the network's sigmoid s by disp_to_depth: 0.01 + 9.99 s (the original)
    sigmoid = ((_disparity_map().astype(np.float64) - 0.01) / 9.99).astype(np.float32)
    perfect = _save_npz(tmp_path / "perfect.npz", {s.key: sigmoid for s in samples})
    out = tmp_path / "out"
    assert eval_depth.main(["--data", str(folder), "--predictions", perfect, "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["dataset"] == "waymo" and report["num_images"] == 5 and report["num_points"] == 5 * len(POINTS)
    assert report["overall"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert report["overall"]["a1"] == 1.0 and report["median_ratio"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert report["per_class"]["moving"]["num_points"] == 15 and report["per_class"]["background"]["num_points"] == 25
    assert report["per_class"]["static_movable"]["num_points"] == 10
    assert report["protocol"]["name"] == "original" and report["protocol"]["pixel"] == "truncate"
    assert sum(b["num_points"] for b in report["by_distance"]) == 60
    assert "| all (mean over images) | 60 | 0.000 |" in (out / "metrics.md").read_text()
    for name in ("error_by_distance.png", "qualitative.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    scaled = _save_npz(tmp_path / "scaled.npz", {s.key: _disparity_map() * 2.5 for s in samples})
    out2 = tmp_path / "out2"
    assert eval_depth.main(["--data", str(folder / "waymo-val-000000.tar"), "--predictions", scaled, "--kind",
                            "disparity", "--out", str(out2), "--max-samples", "2", "--pixel", "nearest"]) == 0
    report2 = json.loads((out2 / "metrics.json").read_text())
    assert report2["num_images"] == 2 and report2["protocol"]["name"] == "modified"
    assert "MODIFIED protocol: nearest pixel" in (out2 / "metrics.md").read_text()
    assert report2["median_ratio"]["mean"] == pytest.approx(2.5, rel=1e-6)
    assert report2["overall"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert report2["overall"]["rmse"] == pytest.approx(0.0, abs=1e-4)


def test_depth_cli_depth_maps_and_kitti_protocol(shards, tmp_path):
    folder, samples = shards
    # --kind depth: the maps hold depth 1/d(r'), upsampled bilinearly IN DEPTH, which is not exact;
    # evaluated as KITTI (Garg crop of 20x30: rows 8 <= v < 19, columns 1 <= u < 28).
    depth_map = 1.0 / _disparity_map().astype(np.float64)
    preds = _save_npz(tmp_path / "depth.npz", {s.key: depth_map for s in samples})
    out = tmp_path / "out"
    assert eval_depth.main(["--data", str(folder), "--predictions", preds, "--kind", "depth", "--dataset", "kitti",
                            "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    in_crop = [(u, v) for u, v, _ in POINTS if 8 <= v < 19 and 1 <= u < 28]
    assert report["dataset"] == "kitti" and report["protocol"]["garg_crop"] is True
    assert report["num_points"] == 5 * len(in_crop)
    # depth-kind upsampling of 1/d is not exact (bilinear in depth, not disparity): compare with a direct computation
    expected = []
    for _u, v in in_crop:
        src = (v + 0.5) / 2 - 0.5
        lo = math.floor(src)
        expected.append((1 - (src - lo)) * depth_map[lo, 0] + (src - lo) * depth_map[lo + 1, 0])
    gt = np.array([np.float32(_gt_depth(v)) for _, v in in_crop], dtype=np.float64)
    lower = (len(gt) - 1) // 2  # the original's median: the lower middle value
    pred = np.array(expected) * np.sort(gt)[lower] / np.sort(expected)[lower]
    # float32 upsampling (the original): abs_rel ~1e-3 carries float32 rounding of ~1e-7 relative per depth
    assert report["overall"]["abs_rel"] == pytest.approx(float(np.mean(np.abs(gt - pred) / gt)), abs=1e-7)


def test_depth_cli_errors(shards, tmp_path, capsys):
    folder, samples = shards
    missing = _save_npz(tmp_path / "missing.npz", {samples[0].key: _disparity_map()})
    assert eval_depth.main(["--data", str(folder), "--predictions", missing]) == 2
    assert f"no array for sample key {samples[1].key!r}" in capsys.readouterr().err
    assert eval_depth.main(["--data", str(folder), "--checkpoint", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "x.pt" in err and "no such file" in err
    assert eval_depth.main(["--data", str(tmp_path), "--predictions", missing]) == 2
    assert "no *.tar shard found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_depth.main(["--data", str(folder)])  # neither --checkpoint nor --predictions


def test_motion_segmentation_cli(shards, tmp_path):
    """Every pixel of the 20x30 mask is scored (the original's Waymo protocol), by hand: the map is 1 at
    training columns 0-6, so the upsampled scores are 1 at columns 0-12, 0.75 at 13, 0.25 at 14, 0 beyond.
    Per image: 500 valid pixels (100 unlabeled), 130 moving, all predicted above 0.75 (no false negative);
    predicted valid pixels 500 (t < 0), 200 (0 <= t < 0.25), 180 (t < 0.75), 160 (t < 1): 5 images pooled."""
    folder, samples = shards
    motion = np.zeros(TRAIN_HW, dtype=np.float32)
    motion[:, :7] = 1.0
    preds = _save_npz(tmp_path / "motion.npz", {s.key: motion for s in samples})
    out = tmp_path / "out"
    assert eval_motion.main(["--data", str(folder), "--predictions", preds, "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["protocol"]["name"] == "original" and report["num_images"] == 5
    assert (report["num_scored"], report["num_moving"]) == (5 * 500, 5 * 130)
    t = np.array([(k - 1) / 149 for k in range(150)])
    predicted = 5 * np.select([t < 0, t < 0.25, t < 0.75], [500, 200, 180], 160)
    curve = report["curve"]
    assert curve["tp"] == [650.0] * 150 and curve["fn"] == [0.0] * 150
    np.testing.assert_array_equal(curve["fp"], predicted - 650)
    np.testing.assert_allclose(curve["precision"], 650 / predicted, rtol=1e-6)
    np.testing.assert_allclose(curve["f1"], 2 * (650 / predicted) / (650 / predicted + 1), rtol=1e-6)
    assert report["best_f1"] == pytest.approx(2 * 0.8125 / 1.8125, abs=1e-6)
    assert report["best_threshold"] == pytest.approx(112 / 149, abs=1e-7)  # the first threshold >= 0.75
    record = np.load(out / "pr_record.npz")
    assert record["thrds"].shape == (1, 150, 1, 1) and record["f1"].dtype == np.float32
    assert (out / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "original Dynamo-Depth protocol" in (out / "metrics.md").read_text()
    points = tmp_path / "points"
    assert eval_motion.main(["--data", str(folder), "--predictions", preds, "--scoring", "points",
                             "--out", str(points)]) == 0
    report = json.loads((points / "metrics.json").read_text())
    assert "MODIFIED protocol" in report["protocol"]["description"] and report["num_scored"] == 5 * 10


def test_disparity_from_random_depth_network():
    import torch

    from dynamo_depth.models import DynamoDepthModel

    torch.manual_seed(0)
    network = DynamoDepthModel()
    image = np.full((64, 96, 3), 128, dtype=np.uint8)
    disparity = eval_depth.disparity_from_network(network=network, image_rgb=image)
    assert disparity.shape == (64, 96) and np.all((disparity > 0) & (disparity < 1))


def test_depth_cli_reads_s3(shards, tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server", reason="moto not installed")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "k"),
                            ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="eval")
        folder, samples = shards
        for shard in sorted(folder.iterdir()):
            client.upload_file(str(shard), "eval", f"built/{shard.name}")
        preds = _save_npz(tmp_path / "p.npz", {s.key: _disparity_map() * 4 for s in samples})
        out = tmp_path / "out"
        assert eval_depth.main(["--data", "s3://eval/built", "--predictions", preds, "--kind", "disparity",
                                "--out", str(out)]) == 0
        report = json.loads((out / "metrics.json").read_text())
        assert report["num_images"] == 5 and report["overall"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    finally:
        server.stop()


# --- --data: a manifest fixes exactly which shards are read, in its order, hash-checked ---------------------


def _write_built(folder, samples, *, manifest_name: str = "manifest.json") -> list:
    """``samples`` as ShardWriter shards of 3 (waymo-val-000000/1.tar) plus a manifest; returns the records."""
    from dynamo_depth.shards.manifest import Manifest, save_manifest
    from dynamo_depth.shards.writer import ShardWriter

    with ShardWriter(str(folder), prefix="waymo-val", max_count=3) as writer:
        for sample in samples:
            writer.write(sample.key, encode(sample))
    records = writer.close()
    save_manifest(Manifest(dataset="waymo", split="val", builder="tests", builder_version="0", shards=tuple(records)),
                  str(folder / manifest_name))
    return records


def _depth_report(data: str, samples, tmp_path, name: str) -> dict:
    preds = _save_npz(tmp_path / f"{name}.npz", {s.key: _disparity_map() for s in samples})
    out = tmp_path / name
    assert eval_depth.main(["--data", data, "--predictions", preds, "--kind", "disparity", "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_manifest_folder_skips_stale_shards_and_json_path_works(tmp_path, capsys):
    from eval import list_shards

    folder = tmp_path / "built"
    folder.mkdir()
    samples = [_sample(f) for f in (1, 2, 3, 4, 10)]
    _write_built(folder, samples)
    stale = _sample(30)  # a shard from an older build: present in the folder, absent from the manifest
    _write_tar(folder / "waymo-val-000002.tar", [stale])
    (folder / "waymo-val-000003.tar.tmp").write_bytes(b"half-written")
    assert list_shards(str(folder)) == [str(folder / "waymo-val-000000.tar"), str(folder / "waymo-val-000001.tar")]
    report = _depth_report(str(folder), samples, tmp_path, "folder")  # the predictions lack the stale key
    assert report["num_images"] == 5 and report["num_points"] == 5 * len(POINTS)

    # the same manifest under another name, no manifest.json: a .json path is a manifest, not a folder
    (folder / "manifest.json").rename(folder / "waymo-val.json")
    assert list_shards(str(folder / "waymo-val.json")) == [str(folder / f"waymo-val-00000{i}.tar") for i in (0, 1)]
    report = _depth_report(str(folder / "waymo-val.json"), samples, tmp_path, "json")
    assert report["num_images"] == 5 and report["overall"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert eval_depth.main(["--data", str(folder / "other.json"), "--predictions", str(tmp_path / "json.npz")]) == 2
    assert "other.json" in capsys.readouterr().err

    # without any manifest: every *.tar in name order, with a warning (the stale shard is read too)
    (folder / "waymo-val.json").unlink()
    with pytest.warns(UserWarning, match="no manifest.json.*WITHOUT hash checks"):
        urls = list_shards(str(folder))
    assert [u.rsplit("/", 1)[-1] for u in urls] == [f"waymo-val-00000{i}.tar" for i in range(3)]


def test_manifest_order_is_reading_order(tmp_path):
    from dynamo_depth.shards.manifest import load_manifest, save_manifest
    from eval import iter_samples

    folder = tmp_path / "built"
    folder.mkdir()
    samples = [_sample(f) for f in (1, 2, 3, 4, 10)]
    _write_built(folder, samples)
    manifest = load_manifest(str(folder))
    save_manifest(dataclasses.replace(manifest, shards=manifest.shards[::-1]), str(folder / "reversed.json"))
    keys = [s.key for s in iter_samples(str(folder / "reversed.json"))]
    assert keys == [s.key for s in samples[3:] + samples[:3]]
    assert [s.key for s in iter_samples(str(folder / "reversed.json"), max_samples=3)] == keys[:3]


def test_altered_or_missing_shard_is_named(tmp_path, capsys):
    folder = tmp_path / "built"
    folder.mkdir()
    samples = [_sample(f) for f in (1, 2, 3, 4, 10)]
    _write_built(folder, samples)
    shard = folder / "waymo-val-000001.tar"
    with tarfile.open(shard) as tar:  # first padding byte after a member whose size is not a multiple of 512
        info = next(m for m in tar.getmembers() if m.size % 512)
    data = bytearray(shard.read_bytes())
    assert data[info.offset_data + info.size] == 0
    data[info.offset_data + info.size] = 0x55  # same size, still a valid tar, different sha256
    shard.write_bytes(bytes(data))
    preds = _save_npz(tmp_path / "p.npz", {s.key: _disparity_map() for s in samples})
    for data_arg in (folder, folder / "manifest.json", shard):  # a lone shard is checked against the manifest beside it
        assert eval_depth.main(["--data", str(data_arg), "--predictions", preds]) == 2
        err = capsys.readouterr().err
        assert "shard waymo-val-000001.tar" in err and "sha256" in err and "altered" in err, err

    shard.unlink()
    assert eval_depth.main(["--data", str(folder), "--predictions", preds]) == 2
    assert "waymo-val-000001.tar" in capsys.readouterr().err


def test_eval_commands_read_an_original_checkpoint_folder(shards, tmp_path, capsys):
    """--checkpoint of eval.depth / motion_segmentation / odometry takes an original module folder; the
    computed predictions equal the model's own on the same (resized) frames."""
    import torch

    from dynamo_depth.models import DynamoDepthModel
    from dynamo_depth.models.original import export_folder
    from eval import predictors

    torch.manual_seed(0)
    model = DynamoDepthModel()
    model.eval()
    ckpt = export_folder(model, tmp_path / "ckpt", height=64, width=96)
    folder, samples = shards
    frames = predictors._frames(samples[1], (64, 96))
    with torch.no_grad():
        expected_disp = model.predict_disparity(frames[1:2])[0][0, 0].double().numpy()
        outputs = model(frames[None], phase="fine_tune")
    assert np.array_equal(predictors.depth_predictor(str(ckpt))(samples[1]), expected_disp)
    assert np.array_equal(predictors.motion_predictor(str(ckpt))(samples[1]),
                          outputs.motion_mask(0)[0, 0].double().numpy())
    relative = predictors.odometry_predictor(str(ckpt))(samples[1])  # T(translation) R(axisangle), float32
    assert np.allclose(relative @ outputs.cam_T_cam[1][0].double().numpy(), np.eye(4), atol=1e-6)
    assert relative.dtype == np.float64 and np.array_equal(relative, relative.astype(np.float32))
    assert eval_depth.main(["--data", str(folder), "--checkpoint", str(ckpt)]) == 0
    assert eval_motion.main(["--data", str(folder), "--checkpoint", str(ckpt)]) == 0
    assert eval_odometry.main(["--data", str(folder), "--checkpoint", str(ckpt)]) == 0
    (ckpt / "motion_mask.pth").unlink()
    capsys.readouterr()
    assert eval_motion.main(["--data", str(folder), "--checkpoint", str(ckpt)]) == 2
    assert "motion_mask.pth" in capsys.readouterr().err
    assert eval_depth.main(["--data", str(folder), "--checkpoint", str(ckpt)]) == 0  # depth-only is enough


def test_trainer_checkpoint_loads_from_a_run_folder_on_s3(s3_bucket, tmp_path):
    """--checkpoint s3://bucket/run (its checkpoints/last.json pointer) loads the file the pointer names."""
    import io
    import json as json_module

    import torch

    from dynamo_depth.config import RunConfig, config_to_dict
    from dynamo_depth.models import DynamoDepthModel
    from dynamo_depth.models.loading import load_for_inference
    from dynamo_depth.shards import storage

    torch.manual_seed(3)
    model = DynamoDepthModel()
    buffer = io.BytesIO()
    torch.save({"format": "dynamo-depth-checkpoint", "model": model.state_dict(),
                "config": config_to_dict(RunConfig())}, buffer)
    run = f"{s3_bucket}/run"
    storage.write_bytes_atomic(f"{run}/checkpoints/step-000004.pt", buffer.getvalue())
    storage.write_bytes_atomic(f"{run}/checkpoints/last.json",
                               json_module.dumps({"checkpoint": "step-000004.pt", "step": 4}).encode())
    loaded = load_for_inference(run)
    assert (loaded.height, loaded.width) == (RunConfig().data.height, RunConfig().data.width)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    with pytest.raises(ValueError, match="no such object"):
        load_for_inference(f"{s3_bucket}/elsewhere/step-000001.pt")
