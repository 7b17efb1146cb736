"""Dataset condensers. Importing the package registers every method module in it."""
import importlib
import pkgutil

from smallset.distill.base import CONDENSERS, Condenser, IterativeCondenser, Synthetic, register_condenser  # noqa: F401

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
