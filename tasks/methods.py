"""Method lookup across both registries: a name → its class and kind (``prune`` or ``distill``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from smallset.errors import SmallsetError
from smallset.registry import Registry

if TYPE_CHECKING:  # importing the methods imports torch: only when a method is looked up
    from smallset.method import Method


def registries() -> dict[str, Registry]:
    from smallset import distill, prune

    return {"prune": prune.SELECTORS, "distill": distill.CONDENSERS}


def method_class(name: str) -> type[Method]:
    for registry in registries().values():
        if name in registry:
            return registry.get(name)
    known = ", ".join(f"{n} ({k})" for k, reg in registries().items() for n in reg.names())
    raise SmallsetError(f"Unknown method {name!r}; known methods: {known}.")


def method_kind(name: str) -> str:
    """``prune`` or ``distill`` for a registered method name; unknown names list every method."""
    return method_class(name).kind


def all_methods() -> list[str]:
    return [n for reg in registries().values() for n in reg.names()]
