"""The learning-rate schedules of the evaluation (docs/methods/evaluation.md)."""
from __future__ import annotations

import math

from smallset.protocols.base import SCHEDULES, Schedule

DECAY = 0.1  # the step schedules' lr factor after the decay


class StepDecay(Schedule):
    """The lr ×0.1 with a fresh optimiser after pass :meth:`decay_after`."""

    def lr(self, base_lr: float, step: int, total_steps: int, pass_index: int, passes: int) -> float:
        return base_lr if pass_index <= self.decay_after(passes) else base_lr * DECAY


@SCHEDULES.register("reference")
class Reference(StepDecay):
    """The condensation papers' ``evaluate_synset``: E + 1 passes (loop index 0..E), decay after pass E//2 + 1."""

    extra_passes = 1

    def decay_after(self, passes: int) -> int:
        return (passes - 1) // 2 + 1  # E = the passes minus one, min_steps included


@SCHEDULES.register("half")
class Half(StepDecay):
    """E passes, the decay after pass index E//2."""

    def decay_after(self, passes: int) -> int:
        return passes // 2


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Cosine annealing per step from the peak lr to 0 (DeepCore's evaluation)."""

    def lr(self, base_lr: float, step: int, total_steps: int, pass_index: int, passes: int) -> float:
        return 0.5 * base_lr * (1 + math.cos(math.pi * step / total_steps))


@SCHEDULES.register("constant")
class Constant(Schedule):
    """The same lr throughout."""

    def lr(self, base_lr: float, step: int, total_steps: int, pass_index: int, passes: int) -> float:
        return base_lr
