"""One file registers a component: registries that find their implementations in a plugin package.

A plugin package (``smallset.protocols``, ``smallset.sources``, ``smallset.augmentations``) imports every
module in its folder (:func:`import_modules`, as ``smallset.prune`` does for selectors), and each module
registers what it defines. A :class:`PluginRegistry` names its package and imports it on its first lookup,
the way entry points are loaded: the module that defines the registry (``smallset.data``,
``smallset.augment``) never imports its plugins, so the plugins can import it without an import cycle.
docs/adding-a-component.md shows each kind of component.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Iterable, Iterator, TypeVar

from smallset.registry import Registry

T = TypeVar("T")


def import_modules(package: str, path: Iterable[str], skip: tuple[str, ...] = ("base",)) -> None:
    """Import every module of ``package`` (its ``__path__``) except ``skip`` and private ``_name`` modules."""
    for module in pkgutil.iter_modules(path):
        if module.name not in skip and not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")


class PluginRegistry(Registry[T]):
    """A :class:`~smallset.registry.Registry` that imports the plugin package ``plugins`` on its first lookup."""

    def __init__(self, kind: str, plugins: str):
        super().__init__(kind)
        self.plugins = plugins
        self._plugins_loaded = False

    def _load_plugins(self) -> None:
        if not self._plugins_loaded:
            importlib.import_module(self.plugins)  # its modules register themselves here
            self._plugins_loaded = True

    def get(self, name: str) -> T:
        self._load_plugins()
        return super().get(name)

    def names(self) -> list[str]:
        self._load_plugins()
        return super().names()

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
