"""Rank 0's run log: TensorBoard scalars / images, ``run_dir/metrics.jsonl`` and a tqdm bar (``train.main``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from dynamo_depth.config import RunConfig
from dynamo_depth.shards import storage


class RankZeroLogger:
    """TensorBoard scalars/images, ``metrics.jsonl`` and a tqdm bar; built on rank 0 only.

    TensorBoard writes into ``run_dir/tb`` for a local run_dir; for a URL, into a local temporary folder that
    ``sync`` (each checkpoint) and ``close`` upload to ``run_dir/tb/``. ``metrics.jsonl`` keeps the rows of
    an earlier run up to the resumed step and is rewritten whole (atomically) by ``sync`` and ``close``.
    """

    def __init__(self, *, config: RunConfig, start: int, stop: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.config = config
        run_dir = config.train.run_dir
        self.tb_url = storage.join(run_dir, "tb")
        self.metrics_url = storage.join(run_dir, "metrics.jsonl")
        self.local_tb = storage._local_path(self.tb_url) if storage.is_local(run_dir) else None
        self._tmp = None if self.local_tb else tempfile.mkdtemp(prefix="dynamo-tb-")
        self.writer = SummaryWriter(log_dir=self.local_tb or self._tmp)
        self.rows = self._earlier_rows(start)
        self.bar = tqdm(total=stop, initial=start, unit="step", disable=not config.train.progress, dynamic_ncols=True)

    def _earlier_rows(self, start: int) -> list[str]:
        """The metrics lines of the steps before ``start`` (a resumed run replays the later ones)."""
        if start == 0 or not storage.exists(self.metrics_url):
            return []
        lines = storage.read_bytes(self.metrics_url).decode("utf-8").splitlines()
        return [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= start]

    def log_step(self, *, step: int, phase: str, result: Any, batch: Any, data_seconds: float,
                 step_seconds: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(phase=phase, loss=f"{result.terms['total']:.4f}")
        if self.config.train.log_every and step % self.config.train.log_every == 0:
            scalars = {f"loss/{name}": value for name, value in result.terms.items()}
            scalars.update({"optim/lr": result.lr, "optim/grad_norm": result.grad_norm,
                            "speed/step_seconds": step_seconds,
                            "speed/data_fraction": data_seconds / max(step_seconds, 1e-9)})
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)
            self.rows.append(json.dumps({"step": step, "phase": phase, **scalars}, allow_nan=True))
        if batch is not None and result.outputs is not None:
            self._images(step, batch, result.outputs)

    def _images(self, step: int, batch: Any, outputs: Any) -> None:
        self.writer.add_image("input/cur", batch.losses.color[0][0].float().cpu(), step)
        disparity = outputs.disp[0][0].float().cpu()
        self.writer.add_image("output/disparity", disparity / disparity.max().clamp(min=1e-6), step)
        if 0 in outputs.motion_logits:
            self.writer.add_image("output/motion_mask", outputs.motion_mask(0)[0].float().cpu(), step)

    def sync(self) -> None:
        """Write ``metrics.jsonl``; flush TensorBoard and upload its files (URL run_dirs) to ``run_dir/tb/``."""
        storage.write_bytes_atomic(self.metrics_url, "".join(row + "\n" for row in self.rows).encode())
        self.writer.flush()
        if self._tmp is not None:
            for name in sorted(os.listdir(self._tmp)):
                if os.path.isfile(os.path.join(self._tmp, name)):
                    storage.put_file(os.path.join(self._tmp, name), storage.join(self.tb_url, name))

    def close(self) -> None:
        self.bar.close()
        try:
            self.writer.close()
            self.sync()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
