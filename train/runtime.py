"""Where a training process runs (``Runtime``: rank, world size, device), shared by the loop, the batch
stream and the stop signals."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Runtime"]


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1
