"""What the Dynamo-Depth networks hand to the warping and the losses (torch tensors, float32).

Frame offsets are ints: 0 = target t, -1 = t-1, +1 = t+1. Scales are ints s = 0..3 (H/2^s x W/2^s).

``ModelOutputs`` (one training forward, the original's names in brackets):

==========================  ==========================  ==================================================
field                       shape                       meaning
==========================  ==========================  ==================================================
``disp[s]``                 (B, 1, H/2^s, W/2^s)        sigmoid disparity of frame 0 (``('disp', 0, s)``)
``axisangle[f]``            (B, 1, 3) rad               pose-decoder rotation of the pair (f, 0), f = -1, 1
``translation[f]``          (B, 1, 3)                   pose-decoder translation of the pair (f, 0)
``cam_T_cam[f]``            (B, 4, 4)                   target camera -> camera f (``('cam_T_cam', 0, f)``)
``complete_flow[s]``        (B, 3, H/2^s, W/2^s) m      complete flow towards frame +1 (``('complete_flow', 1, s)``);
                                                        towards -1 it is the negation (linear motion)
``motion_logits[s]``        (B, 1, H/2^s, W/2^s)        motion-mask logits (``('motion_prob', f, s)``, both f)
==========================  ==========================  ==================================================

``complete_flow`` / ``motion_logits`` are empty when the phase does not run those decoders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import torch


@dataclass(frozen=True)
class ModelOutputs:
    """The networks' outputs of one forward (see the module docstring for shapes and units)."""

    disp: Mapping[int, torch.Tensor]
    axisangle: Mapping[int, torch.Tensor]
    translation: Mapping[int, torch.Tensor]
    cam_T_cam: Mapping[int, torch.Tensor]
    complete_flow: Mapping[int, torch.Tensor] = field(default_factory=dict)
    motion_logits: Mapping[int, torch.Tensor] = field(default_factory=dict)

    def motion_mask(self, scale: int) -> torch.Tensor:
        """sigmoid of the scale's motion logits (``('motion_mask', f, s)``)."""
        return torch.sigmoid(self.motion_logits[scale])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ModelOutputs:
        """A copy with ``fn`` applied to every tensor (same fields and keys)."""
        return ModelOutputs(**{f.name: {k: fn(v) for k, v in getattr(self, f.name).items()} for f in fields(self)})

    def cut(self) -> ModelOutputs:
        """A copy whose tensors are new autograd leaves (same storage, ``requires_grad`` as here).

        Losses computed on the cut collect their gradients in its tensors' ``.grad`` (and their graph can be
        freed piece by piece, ``compute_losses(backward=True)``); ``self.backward(cut)`` then runs the
        networks' backward once with those gradients.
        """
        return self.map(lambda v: v.detach().requires_grad_(v.requires_grad))

    def backward(self, cut: ModelOutputs) -> None:
        """Backpropagate the gradients gathered in ``cut`` (made by ``self.cut()``) through the networks."""
        roots: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        for mine, theirs in zip(self._tensors(), cut._tensors(), strict=True):
            if theirs.grad is not None and mine.requires_grad:
                roots.append(mine)
                grads.append(theirs.grad)
        if roots:
            torch.autograd.backward(roots, grads)

    def _tensors(self) -> list[torch.Tensor]:
        maps = [getattr(self, f.name) for f in fields(self)]
        return [m[k] for m in maps for k in sorted(m)]

    def detached(self) -> ModelOutputs:
        """A copy with every tensor detached (for logging)."""
        return self.map(torch.Tensor.detach)
