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
