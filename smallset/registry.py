"""A small name → implementation registry, shared by models, selectors and condensers.

Modelled on timm/torchvision: implementations register themselves with a decorator, callers look
them up by name, and an unknown name lists the known ones instead of falling through an if/elif chain.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from smallset.errors import SmallsetError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise SmallsetError(f"Unknown {self.kind} {name!r}; known {self.kind}s: {known}.") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
