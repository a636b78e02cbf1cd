"""The SH→MH warm-up: a linear schedule of MixedViolationLoss's ``mix``."""

from __future__ import annotations

from typing import Any

from .losses.mixed_violation_loss import MixedViolationLoss


class SHToMHWarmup:
    """Move ``loss.mix`` linearly from ``start`` (SH at 0) to 1 (MH) over ``warmup_steps`` steps.

    One line in the training loop, after ``optimizer.step()``::

        loss_fn = MixedViolationLoss(margin=0.2, reducer=SumReducer())
        warmup = SHToMHWarmup(loss_fn, warmup_steps=1000)
        ...
        warmup.step()

    ``mix = start + (1 − start)·min(1, steps / warmup_steps)``: exactly SH before the first step
    (with start=0) and exactly MH from step ``warmup_steps`` on. ``warmup_steps=0`` is MH at once.
    ``state_dict()``/``load_state_dict()`` save and restore the position (for resuming).
    """

    def __init__(self, loss: MixedViolationLoss, warmup_steps: int, start: float = 0.0):
        if not isinstance(loss, MixedViolationLoss):
            raise ValueError(f"SHToMHWarmup drives a MixedViolationLoss, got {type(loss).__name__}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"start must be in [0, 1], got {start!r}")
        self.loss = loss
        self.warmup_steps = warmup_steps
        self.start = float(start)
        self.num_steps = 0
        self.loss.mix = self.mix

    @property
    def mix(self) -> float:
        if self.warmup_steps == 0 or self.num_steps >= self.warmup_steps:
            return 1.0
        return self.start + (1.0 - self.start) * self.num_steps / self.warmup_steps

    def step(self) -> float:
        """Advance one step; returns the new mix."""
        self.num_steps += 1
        self.loss.mix = self.mix
        return self.loss.mix

    def state_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "warmup_steps": self.warmup_steps, "start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state["num_steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self.start = float(state["start"])
        self.loss.mix = self.mix
