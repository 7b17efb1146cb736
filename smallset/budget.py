"""Budget checks that need neither data nor torch, so the command line refuses a bad budget at once."""
from __future__ import annotations

import math

from smallset.errors import SmallsetError


def check_fraction(fraction: float) -> float:
    """A pruning budget: a finite number in (0, 1]."""
    if isinstance(fraction, bool):
        raise SmallsetError(f"fraction must be a number in (0, 1], not {fraction!r}.", option="fraction")
    try:
        fraction = float(fraction)
    except (TypeError, ValueError, OverflowError):
        raise SmallsetError(f"fraction must be a number in (0, 1], not {fraction!r}.", option="fraction") from None
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise SmallsetError(f"fraction must lie in (0, 1]; got {fraction}.", option="fraction")
    return fraction


def check_ipc_value(ipc) -> int:
    """A distillation budget: a whole number of images per class, at least 1."""
    if isinstance(ipc, bool):
        raise SmallsetError(f"ipc must be a whole number of at least 1; got {ipc}.", option="ipc")
    try:
        whole = int(ipc) == ipc
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or ipc < 1:
        raise SmallsetError(f"ipc must be a whole number of at least 1; got {ipc}.", option="ipc")
    return int(ipc)


# --- budget units: how a method counts its budget (a capability of the method class) -----------------------
class BudgetUnit:
    """How a method counts its budget. A method class names its unit (``Method.budget_unit``); the pipeline
    asks the unit, never the method's kind, how to check, convert, label and name a budget."""

    name: str = ""  # the budget's field name: "fraction" or "ipc"
    flag: str = ""  # the command-line flag that gives it

    def check(self, value):
        """The value alone (no data): one sentence naming the budget when it is malformed."""
        raise NotImplementedError

    def convert(self, fraction: float | None, ipc: int | None, n_examples: int, n_classes: int):
        """This unit's value for a budget given as a fraction and/or images per class, matched on images."""
        raise NotImplementedError

    def check_fits(self, value, class_counts: list[int]):
        """The checks that need the data's class sizes (before any preparation)."""
        raise NotImplementedError

    def label(self, value) -> str:
        """``fraction=0.1``, ``ipc=10``: ``value`` a number or the string MLflow gives back."""
        raise NotImplementedError

    def slug(self, value) -> str:
        """The budget's part of a default file name."""
        raise NotImplementedError

    def config_budget(self, value):
        """What ``Method.make_config`` is told of the budget (the paper's defaults may depend on it)."""
        return None


class FractionUnit(BudgetUnit):
    """A fraction of the source's examples, in (0, 1] (selectors)."""

    name, flag = "fraction", "--fraction"

    def check(self, value):
        return check_fraction(value)

    def convert(self, fraction, ipc, n_examples, n_classes):
        return fraction if fraction is not None else min(1.0, ipc * n_classes / n_examples)

    def label(self, value) -> str:
        return "fraction=1" if value in (None, "None") else f"fraction={float(value):g}"  # None: the whole source

    def check_fits(self, value, class_counts):
        return check_fraction_fits(value, class_counts)

    def slug(self, value) -> str:
        return f"f{value:g}"


class IpcUnit(BudgetUnit):
    """Images per class, a whole number of at least 1 (condensers)."""

    name, flag = "ipc", "--ipc"

    def check(self, value):
        return check_ipc_value(value)

    def convert(self, fraction, ipc, n_examples, n_classes):
        return ipc if ipc is not None else max(1, round(fraction * n_examples / n_classes))

    def label(self, value) -> str:
        return f"ipc={value}"

    def check_fits(self, value, class_counts):
        try:
            ipc = int(value)
        except (TypeError, ValueError):
            raise SmallsetError(f"ipc must be a whole number, not {value!r}.", option="ipc") from None
        smallest = min(class_counts) if class_counts and sum(class_counts) else 0
        if ipc < 1 or ipc > smallest:
            raise SmallsetError(
                f"ipc must lie between 1 and {smallest} (the smallest class of the source); got {ipc}.", option="ipc")
        return ipc

    def slug(self, value) -> str:
        return f"ipc{value}"

    def config_budget(self, value):
        return value


FRACTION = FractionUnit()
IPC = IpcUnit()
BUDGET_UNITS: dict[str, BudgetUnit] = {u.name: u for u in (FRACTION, IPC)}


def check_fraction_fits(fraction: float, counts: list[int]) -> float:
    """Refuse a fraction that keeps fewer examples than there are classes (round(fraction × N) < C): the
    set would lose whole classes, or be empty. The sentence gives the smallest fraction that keeps one
    example per class."""
    fraction = check_fraction(fraction)
    n, k = sum(counts), sum(1 for c in counts if c > 0)
    total = int(math.floor(fraction * n + 0.5))
    if n and total < k:
        digits = 3 - int(math.floor(math.log10(k / n))) - 1
        smallest = math.ceil(k / n * 10 ** digits) / 10 ** digits
        raise SmallsetError(f"fraction {fraction:g} keeps {total} of {n} examples, fewer than one per class "
                            f"({k} class{'es' if k != 1 else ''}); the smallest fraction that keeps one example per "
                            f"class is {smallest:g}.", option="fraction")
    return fraction
