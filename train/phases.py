"""The 4-phase schedule as data: which phase a global step is in, its progress and learning rate.

Global steps count optimiser steps from 0 over the whole run. Phase p occupies steps
``[start, start + epochs_p * iterations_per_epoch)``, phases in ``PHASE_NAMES`` order (0-epoch phases
are skipped). Within a phase the learning rate of step i (0-based in the phase) is

    lr * lr_scale_p * decay_factor ** floor(i / (decay_every_epochs * iterations_per_epoch))

A fresh Adam over the phase's trainable parameters starts at each phase boundary (the trained set
changes), so its moments and the decay count restart there too.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamo_depth.config import PHASE_NAMES, OptimConfig, RunConfig


@dataclass(frozen=True)
class PhaseWindow:
    """One phase's place in the run: steps ``[start, start + steps)`` at ``lr_scale`` times the base lr."""

    name: str
    start: int
    steps: int
    lr_scale: float

    @property
    def end(self) -> int:
        return self.start + self.steps

    def progress(self, step: int) -> float:
        """Fraction of the phase done before global ``step``: 0 at its first step, < 1 at its last."""
        return (step - self.start) / self.steps


def phase_windows(config: RunConfig) -> tuple[PhaseWindow, ...]:
    """The non-empty phases of the run in order, with their step ranges."""
    windows, start = [], 0
    for name in PHASE_NAMES:
        phase = config.phase(name)
        steps = phase.epochs * config.schedule.iterations_per_epoch
        if steps:
            windows.append(PhaseWindow(name=name, start=start, steps=steps, lr_scale=phase.lr_scale))
            start += steps
    return tuple(windows)


def total_steps(config: RunConfig) -> int:
    """Optimiser steps of the whole schedule."""
    return sum(w.steps for w in phase_windows(config))


def window_at(config: RunConfig, step: int) -> PhaseWindow:
    """The phase that global ``step`` belongs to; ValueError past the end of the schedule."""
    for window in phase_windows(config):
        if window.start <= step < window.end:
            return window
    raise ValueError(f"step {step} is outside the schedule of {total_steps(config)} steps")


def learning_rate(*, optim: OptimConfig, window: PhaseWindow, step: int, iterations_per_epoch: int) -> float:
    """The learning rate of global ``step`` inside ``window`` (module docstring)."""
    if not window.start <= step < window.end:
        raise ValueError(f"step {step} is not in phase {window.name} [{window.start}, {window.end})")
    decays = (step - window.start) // (optim.decay_every_epochs * iterations_per_epoch)
    return optim.lr * window.lr_scale * optim.decay_factor**decays


RAMP_EPOCHS = 1.0 / 3.0
"""The ramped loss terms reach full weight after this many epochs of their phase (the original's ramp_red 3)."""


def ramp_factor(window: PhaseWindow, step: int, *, iterations_per_epoch: int) -> float:
    """clip(3 * steps_into_phase / iterations_per_epoch, 0, 1): the weight factor of the ramped loss terms.

    The original computes clip(ramp_red * step / num_steps_per_epoch, 0, 1) with ramp_red = 3; the step
    is counted from the start of the phase here (its phases start their own step count).
    """
    if iterations_per_epoch < 1:
        raise ValueError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
    return min(1.0, max(0.0, (step - window.start) / (RAMP_EPOCHS * iterations_per_epoch)))
