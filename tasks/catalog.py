"""What the command line offers, without importing torch: method names, kinds and options, models,
protocols, augmentations and source types.

Importing the methods means importing torch (about 2 s and 850 MB). The parser, ``smallset methods`` and
every refusal that needs only names use this catalogue instead: a JSON file built once from the real
registries and cached under ``$SMALLSET_CACHE`` (default ``~/.cache/smallset``), keyed on the Python
version and the path, size and modification time of every module of the package, so a new or edited
method rebuilds it on the next call. When the cache cannot be written the catalogue is built each time.

The catalogue only ever refuses what the registries would refuse: names, and option values of the simple
types (bool, int, float, str, a fixed choice). Everything else is checked by
:func:`smallset.tasks.spec.resolve_cell` as before, once torch is loaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

from smallset.registry import Registry

CATALOG_FORMAT = 1
PACKAGES = ("smallset", "smallset.prune", "smallset.distill")
_MEMO: dict[str, dict] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("SMALLSET_CACHE") or Path.home() / ".cache" / "smallset")


def fingerprint() -> str:
    """sha256 over the Python version and every module file of the packages that register things."""
    import importlib.util

    h = hashlib.sha256(f"{CATALOG_FORMAT} {sys.version}".encode())
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for f in sorted(Path(root).rglob("*.py")):
                try:
                    st = f.stat()
                except OSError:
                    continue
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def type_spec(hint: Any) -> dict:
    """A config field's type as the command line needs it (the simple types the catalogue can check)."""
    if hint in (bool, int, float, str):
        return {"type": hint.__name__}
    if typing.get_origin(hint) is typing.Literal:
        return {"type": "choice", "choices": list(typing.get_args(hint))}
    return {"type": "json"}


def hint_of(spec: dict) -> Any:
    """The type hint :func:`smallset.config.coerce_value` checks a value against (None: not checked here)."""
    t = spec.get("type")
    if t == "choice":
        return typing.Literal[tuple(spec["choices"])]
    return {"bool": bool, "int": int, "float": float, "str": str}.get(t)


def build() -> dict:
    """The catalogue from the real registries (imports every method, so torch)."""
    from smallset.augment import AUGMENTATIONS
    from smallset.config import config_fields, field_default
    from smallset.data import SOURCES
    from smallset.models import model_names
    from smallset.tasks.methods import registries
    from smallset.train import PROTOCOLS

    methods = {}
    for kind, reg in registries().items():
        for name in reg.names():
            cls = reg.get(name)
            hints = typing.get_type_hints(cls.config_cls) if dataclasses.is_dataclass(cls.config_cls) else {}
            doc = (cls.__doc__ or "").strip().splitlines()
            methods[name] = {
                "kind": kind,
                "doc": doc[0] if doc else "",
                "fields": [{"name": f.name, "help": f.metadata.get("help", ""), "default": str(field_default(f)),
                            **type_spec(hints.get(f.name))} for f in config_fields(cls.config_cls)],
            }
    return {"format": CATALOG_FORMAT, "methods": methods, "models": model_names(), "protocols": PROTOCOLS.names(),
            "augmentations": AUGMENTATIONS.names(), "sources": SOURCES.names()}


def catalog() -> dict:
    """The cached catalogue (built and cached on first use after any change to the package)."""
    key = fingerprint()
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir() / f"cli-catalog-{key[:24]}.json"
    data = None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != CATALOG_FORMAT:
            data = None
    except (OSError, ValueError, AttributeError):
        data = None
    if data is None:
        data = build()
        _save(path, data)
    _MEMO[key] = data
    return data


def _save(path: Path, data: dict) -> None:
    from smallset.atomic import write_atomic
    from smallset.errors import SmallsetError

    text = json.dumps(data, indent=1, sort_keys=True)
    try:
        write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    except (SmallsetError, OSError):
        return  # a read-only cache: build each time
    now = time.time()
    for old in path.parent.glob("cli-catalog-*.json"):  # catalogues of older code, after a day unused
        try:
            if old != path and now - old.stat().st_mtime > 86400:
                old.unlink()
        except OSError:
            pass


# --- lookups with the registries' own sentences ------------------------------------------------------
def _names_registry(kind: str, names) -> Registry:
    reg: Registry = Registry(kind)
    for n in names:
        reg.register(n)(n)
    return reg


def method_info(name: str) -> dict:
    """The catalogue entry of a method; an unknown name lists every method, as method_class does."""
    from smallset.errors import SmallsetError

    methods = catalog()["methods"]
    if name in methods:
        return methods[name]
    known = ", ".join(f"{n} ({m['kind']})" for kind in ("prune", "distill")
                      for n, m in sorted(methods.items()) if m["kind"] == kind)
    raise SmallsetError(f"Unknown method {name!r}; known methods: {known}.")


def method_names(kind: str) -> list[str]:
    return sorted(n for n, m in catalog()["methods"].items() if m["kind"] == kind)


def check_model(name: str) -> None:
    _names_registry("model", catalog()["models"]).get(name)


def check_protocol(name: str) -> None:
    _names_registry("protocol", catalog()["protocols"]).get(name)


def check_augmentation(spec: str | None) -> None:
    if spec is None or spec in ("", "none"):
        return
    _names_registry("augmentation", catalog()["augmentations"]).get(spec.partition(":")[0])


def check_source_type(kind: str) -> None:
    _names_registry("source type", catalog()["sources"]).get(kind)


def check_overrides(method: str, overrides: dict | None) -> None:
    """Unknown options and values of the simple types, with :func:`smallset.config.coerce_config`'s sentences."""
    from smallset.config import coerce_value
    from smallset.errors import SmallsetError

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    fields = {f["name"]: f for f in method_info(method)["fields"]}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise SmallsetError(
            f"Method {method!r} has no option {', '.join(unknown)}; its options are: {', '.join(fields) or 'none'}.")
    for key, value in overrides.items():
        hint = hint_of(fields[key])
        if hint is not None:
            coerce_value(method, key, value, hint)
