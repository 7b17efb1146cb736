"""Training helpers shared by the selectors that train networks themselves (the EL2N/GraNd scoring runs,
InfoBatch, CREST's optional augmentation): random crop + horizontal flip on normalised batches, and the
warm-up + multi-step learning-rate schedule of CREST's reference code.

Not a selector (registers nothing). Rationale: docs/methods/el2n.md#el2n-recipe and
docs/methods/infobatch.md#infobatch-recipe.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

from smallset.augment import crop_flip  # noqa: F401  (re-exported: the methods' batch augmentation)
from smallset.config import option
from smallset.errors import SmallsetError
from smallset.prune.base import Selector

# The values of every ``augment`` option (a Literal in the configs, repeated there because a Literal needs
# its values written out).
AUGMENTS = ("none", "auto", "crop_flip", "crop")


def augment_flags(mode: str, channels: int) -> tuple[bool, bool]:
    """(crop, flip) for an ``augment`` option: ``auto`` crops every image set and flips only colour images
    (digits are not mirror-symmetric; the same rule as the DSA default strategy)."""
    if mode not in AUGMENTS:
        raise SmallsetError(f"augment must be one of {', '.join(AUGMENTS)}, not {mode!r}.", option="augment")
    if mode == "none":
        return False, False
    if mode == "crop":
        return True, False
    if mode == "crop_flip":
        return True, True
    return True, int(channels) != 1


def parse_epochs(text: str, option: str = "lr_milestones") -> list[int]:
    """``"100,150"`` → [100, 150] (sorted); an empty string means none."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        out = sorted(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SmallsetError(f"{option} must be comma-separated whole epochs like 100,150; got {text!r}.",
                            option=option) from None
    if any(m < 0 for m in out):
        raise SmallsetError(f"{option} cannot contain negative epochs; got {text!r}.", option=option)
    return out


def warmup_multistep_lr(lr: float, epoch: int, warmup_epochs: int, milestones: list[int], gamma: float) -> float:
    """CREST's reference schedule (docs/methods/crest.md#crest-optimiser-schedule): lr·e/warmup for epochs
    e ≤ warmup (so epoch 0 runs at LR 0), then one ``gamma`` decay per milestone m with e ≥ warmup + 1 + m.
    With ``warmup_epochs = 0`` the milestones are plain epochs: lr·gamma^#{m ≤ e}."""
    if warmup_epochs > 0 and epoch <= warmup_epochs:
        return lr * epoch / warmup_epochs
    shift = warmup_epochs + 1 if warmup_epochs > 0 else 0
    return lr * gamma ** sum(1 for m in milestones if epoch >= shift + m)


def accuracy_on_test_split(model, ctx, train) -> float | None:
    """The trained model's accuracy on ``ctx.test`` (None without a test split): what a training-time method
    (CREST, InfoBatch) reports as its own result."""
    from smallset.train import accuracy

    test = ctx.test
    if test is None:
        return None
    if (test.channels, test.image_size) != (train.channels, train.image_size):
        raise SmallsetError("The test split's image shape differs from the training set's.")
    return accuracy(model, test, ctx.device)


@dataclass
class TrainingSchedule:
    """The training recipe of the training-time methods, with CREST's reference defaults and CREST's field
    names (docs/methods/crest.md#crest-optimiser-schedule): a method and its baseline on these fields train on
    the same schedule."""

    epochs: int = option(200, "epochs of the full run; the budget is fraction × epochs × ceil(N / batch) SGD steps",
                         ge=1)
    batch_size: int = option(128, "SGD mini-batch size", ge=1)
    lr: float = option(0.1, "peak SGD learning rate", ge=0)
    momentum: float = option(0.0, "SGD momentum (CREST's reference passes none)", ge=0)
    weight_decay: float = option(1e-4, "SGD weight decay", ge=0)
    warmup_epochs: int = option(20, "linear LR warm-up epochs (epoch 0 runs at LR 0)", ge=0)
    lr_milestones: str = option("100,150", "comma-separated epochs, counted after the warm-up, at which the LR is "
                                           "multiplied by lr_gamma")
    lr_gamma: float = option(0.1, "LR decay factor at each milestone", gt=0)
    augment: Literal["none", "auto", "crop_flip", "crop"] = option(
        "none", "training-batch augmentation: reflect-pad-4 random crop and flip (auto: flip only colour images)")


# The one schedule `smallset demo` gives every training-time method, so they and their random_steps baseline
# are compared on the same schedule (at the demo's 2 %: InfoBatch 3 epochs, one pruned; CREST and random_steps
# 150 epochs of one mini-batch each).
DEMO_SCHEDULE = {"epochs": 150, "warmup_epochs": 0, "lr_milestones": ""}


SCHEDULE_FIELDS = tuple(sorted(f.name for f in dataclasses.fields(TrainingSchedule)))


def schedule_key(params: dict) -> str | None:
    """The :class:`TrainingSchedule` fields of a method's params as one canonical string (None when the method
    has no such schedule): a training-time method is compared only with a baseline of the same key."""
    if not all(n in params for n in SCHEDULE_FIELDS):
        return None
    return json.dumps({n: params[n] for n in SCHEDULE_FIELDS})


def check_milestones(c: TrainingSchedule) -> None:
    """What the schedule's field declarations cannot say: ``lr_milestones`` parses (the training-time methods'
    ``check_config`` adds it to the declared ranges)."""
    parse_epochs(c.lr_milestones)


class TrainingTimeSelector(Selector):
    """Capability: a selector that trains a model itself on a :class:`TrainingSchedule` within a step budget
    and reports that model's test accuracy (CREST, InfoBatch, random_steps); comparisons judge it by it,
    against random_steps on the same schedule (smallset.comparison)."""

    trains_model = True
    uses_model = True
    higher_is_keep = None
    demo = dict(DEMO_SCHEDULE)  # one schedule for every training-time method in `smallset demo`

    @classmethod
    def check_config(cls, config: TrainingSchedule) -> None:
        super().check_config(config)  # the declared ranges
        check_milestones(config)
