"""What an evaluation protocol is: a :class:`Protocol` preset naming a :class:`Schedule` and an
:class:`Optimizer`, each found by name in its registry (``PROTOCOLS``, ``SCHEDULES``, ``OPTIMIZERS``).

The contracts (tests/test_protocols.py checks every registered entry):

- a schedule gives the number of passes over the data, the lr of every optimiser step (finite, positive) and
  the pass after which a fresh optimiser starts (``None``: never);
- an optimiser builds a ``torch.optim.Optimizer`` over the parameters at a given lr, from the preset's fields;
- a preset names a registered schedule, optimiser and augmentation and trains a model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Iterable

from smallset.errors import SmallsetError
from smallset.registry import Registry


class Schedule:
    """How the learning rate moves over one evaluation training. Register the class with
    ``@SCHEDULES.register(name)``; it is made with no arguments."""

    extra_passes: ClassVar[int] = 0  # passes beyond the preset's epochs (the reference trains E + 1)

    def passes(self, epochs: int) -> int:
        """Passes over the data for a preset that asks for ``epochs`` (min_steps included)."""
        return epochs + self.extra_passes

    def decay_after(self, passes: int) -> int | None:
        """The pass index after which a fresh optimiser starts (momentum reset), or None."""
        return None

    def lr(self, base_lr: float, step: int, total_steps: int, pass_index: int, passes: int) -> float:
        """The lr of optimiser step ``step`` (0-based, ``total_steps`` in all), taken in pass ``pass_index``."""
        raise NotImplementedError


class Optimizer:
    """Builds the optimiser of an evaluation training. Register the class with ``@OPTIMIZERS.register(name)``;
    it is made with no arguments."""

    label: ClassVar[str] = ""  # how describe() names it, e.g. "SGD"

    def make(self, params: Iterable, protocol: "Protocol", lr: float):
        """A ``torch.optim.Optimizer`` over ``params`` at learning rate ``lr``."""
        raise NotImplementedError

    def describe(self, protocol: "Protocol") -> str:
        return f"{self.label} lr {protocol.lr:g}"


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")
OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")


@dataclass(frozen=True)
class Protocol:
    """An evaluation recipe: how a fresh network is trained on a reduced set.

    ``schedule`` names a :class:`Schedule` (``SCHEDULES``): ``reference`` is the condensation papers'
    ``evaluate_synset`` exactly: E+1 passes over the data (loop index 0..E), the lr ×0.1 with a fresh optimiser
    after pass index E//2+1; ``half`` trains E passes and decays the same way after pass index E//2; ``cosine``
    anneals to 0 per step; ``constant`` keeps the lr. ``optimizer`` names an :class:`Optimizer`
    (``OPTIMIZERS``; ``sgd`` reads lr, momentum, weight_decay and nesterov). ``augment`` names a training-time
    augmentation (``smallset.augment``), e.g. ``dsa:color_crop_cutout_flip_scale_rotate`` or
    ``dc:crop_scale_rotate``.
    """

    name: str
    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    min_steps: int = 0
    schedule: str = "half"
    augment: str = "none"
    nesterov: bool = False
    optimizer: str = "sgd"

    def schedule_rule(self) -> Schedule:
        return SCHEDULES.get(self.schedule)()

    def optimizer_rule(self) -> Optimizer:
        return OPTIMIZERS.get(self.optimizer)()

    def steps_per_epoch(self, n: int) -> int:
        return max(1, math.ceil(n / self.batch_size))

    def epochs_for(self, n: int) -> int:
        """Passes over a training set of ``n`` examples."""
        epochs = max(self.epochs, math.ceil(self.min_steps / self.steps_per_epoch(n)))
        return self.schedule_rule().passes(epochs)

    def decay_after(self, n: int) -> int | None:
        """The pass index after which a fresh optimiser starts at the decayed lr (step schedules), else None."""
        return self.schedule_rule().decay_after(self.epochs_for(n))

    def describe(self) -> str:
        aug = "" if self.augment == "none" else f", augment {self.augment}"
        return (f"{self.name}: {self.epochs} epochs ({self.schedule} schedule), "
                f"{self.optimizer_rule().describe(self)}, batch {self.batch_size}{aug}")

    def to_dict(self) -> dict:
        return asdict(self)


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def get_protocol(name: str, augment: str | None = None, epochs: int | None = None) -> Protocol:
    """The preset ``name``, with another training-time augmentation and/or epoch count (no min_steps)."""
    p = PROTOCOLS.get(name)
    if augment is not None and augment != "none":
        from smallset.augment import get_augmentation

        get_augmentation(augment)  # validates the name and its argument
        p = replace(p, augment=augment)
    if epochs is not None:
        if epochs < 1:
            raise SmallsetError("eval_epochs must be at least 1.", option="eval_epochs")
        p = replace(p, epochs=epochs, min_steps=0)
    return p
