"""What the command line offers, without importing torch: method names, kinds and options, models,
protocols, augmentations, source types and which of those take a local path.

Importing the methods means importing torch (about 2 s and 850 MB). The parser, ``smallset methods`` and
every refusal that needs only names use this catalogue instead: a JSON file built once from the real
registries and cached under ``$SMALLSET_CACHE`` (default ``~/.cache/smallset``), keyed on the Python
version and the path, size and modification time of every module of the package, so a new or edited
method rebuilds it on the next call. When the cache cannot be written the catalogue is built each time.

A method's options are stored as their declarations (:func:`smallset.config.field_specs`: type, choices,
range), and a value is checked against them by :func:`smallset.config.check_field`, the function
``Method.check_config`` calls: the catalogue refuses exactly what the registries refuse for one option,
with the same sentence. What needs the methods (rules between options, strings they parse, JSON values) is
checked by :func:`smallset.tasks.spec.resolve_cell`, once torch is loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from smallset.registry import Registry

CATALOG_FORMAT = 2  # 2: each option's range (ge/gt/le/lt)
PACKAGES = ("smallset", "smallset.prune", "smallset.distill", "smallset.protocols", "smallset.sources",
            "smallset.augmentations")
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


def build() -> dict:
    """The catalogue from the real registries (imports every method, so torch)."""
    from smallset.augment import AUGMENTATIONS
    from smallset.config import field_specs
    from smallset.data import SOURCES
    from smallset.models import model_names
    from smallset.tasks.methods import registries
    from smallset.train import PROTOCOLS

    methods = {}
    for kind, reg in registries().items():
        for name in reg.names():
            cls = reg.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            methods[name] = {
                "kind": kind,
                "budget_unit": cls.budget_unit.name,
                "doc": doc[0] if doc else "",
                # the options' declarations (type, choices, range), checked by smallset.config.check_field
                "fields": [dict(spec) for spec in field_specs(cls.config_cls)],
            }
    return {"format": CATALOG_FORMAT, "methods": methods, "models": model_names(), "protocols": PROTOCOLS.names(),
            "augmentations": AUGMENTATIONS.names(), "sources": SOURCES.names(),
            "path_sources": [n for n in SOURCES.names() if SOURCES.get(n).takes_path]}


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


def source_takes_path(kind: str) -> bool:
    """Whether the source kind's argument is a local path (``SourceKind.takes_path``)."""
    return kind in catalog()["path_sources"]


def check_overrides(method: str, overrides: dict | None) -> None:
    """Unknown options, and each value against its option's declaration (type, choices, range) with
    :func:`smallset.config.check_field`, the check ``Method.check_config`` makes: the same sentences."""
    from smallset.config import check_field, check_known

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    specs = {f["name"]: f for f in method_info(method)["fields"]}
    check_known(method, list(specs), overrides)
    for key, value in overrides.items():
        check_field(method, specs[key], value)
