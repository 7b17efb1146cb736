"""Typed method configs: one dataclass per method, its fields the paper's hyperparameters.

A field is declared with :func:`option`, the one spelling: its help text, whether it changes the method's
cacheable preparation (``prepare=True``: scores, features, expert trajectories…) and, for a number, its
range (``ge``/``gt``/``le``/``lt``: ≥, >, ≤, <, pydantic's names); a fixed choice is a ``Literal`` type.
The preparation cache key is derived from that metadata (:func:`prepare_params`), so a new option can never
be forgotten in a hand-kept list.

:func:`field_specs` serialises the declarations (type, choices, range: what the torch-free catalogue of
:mod:`smallset.tasks.catalog` stores) and :func:`check_field` checks one value against its declaration,
with one sentence naming the field. Both paths use it: the catalogue's precheck (no torch) and
``Method.check_config`` (:func:`check_config_fields`), so they refuse the same values with the same
sentence. :func:`coerce_config` builds a config from loose values (strings from a command line, JSON from
a deployment). Nothing here imports torch.
"""
from __future__ import annotations

import functools
import json
import math
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any

from smallset.errors import SmallsetError

# A number's range, with pydantic's names: value ≥ ge, > gt, ≤ le, < lt.
RANGE_KEYS = ("ge", "gt", "le", "lt")


@dataclass
class NoConfig:
    """A method without hyperparameters."""


def option(default: Any = MISSING, help: str = "", *, prepare: bool = False, default_factory: Any = MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Any:
    """A config field with its help text; ``prepare=True`` when it changes the method's preparation;
    ``ge``/``gt``/``le``/``lt`` the range of a number (≥, >, ≤, <), checked by :func:`check_field`."""
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("option() takes at most one lower bound (ge or gt) and one upper bound (le or lt)")
    meta = {"help": help, "prepare": prepare,
            **{k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def config_fields(config_cls: type) -> list[Field]:
    return list(fields(config_cls)) if is_dataclass(config_cls) else []


def config_to_dict(config: Any) -> dict:
    if config is None or not is_dataclass(config):
        return {}
    return {f.name: getattr(config, f.name) for f in fields(config)}


def prepare_params(config: Any) -> dict:
    """The config fields marked ``prepare=True``: the part of the cache key that comes from the config."""
    if config is None or not is_dataclass(config):
        return {}
    return {f.name: getattr(config, f.name) for f in fields(config) if f.metadata.get("prepare")}


def field_default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


# --- the declarations, serialised (what the catalogue stores) -------------------------------------------
def type_spec(hint: Any) -> dict:
    """A field's type as the catalogue stores it: a simple type, a fixed choice, or JSON (not checked
    without the registries)."""
    if hint in (bool, int, float, str):
        return {"type": hint.__name__}
    if typing.get_origin(hint) is typing.Literal:
        return {"type": "choice", "choices": list(typing.get_args(hint))}
    return {"type": "json"}


def hint_of(spec: dict) -> Any:
    """The type hint :func:`coerce_value` checks a value of ``spec`` against (None: a JSON value)."""
    t = spec.get("type")
    if t == "choice":
        return typing.Literal[tuple(spec["choices"])]
    return {"bool": bool, "int": int, "float": float, "str": str}.get(t)


@functools.cache
def field_specs(config_cls: type) -> tuple[dict, ...]:
    """Every field's declaration as plain data (read-only): name, help, default, type, choices and range."""
    hints = typing.get_type_hints(config_cls) if is_dataclass(config_cls) else {}
    specs = []
    for f in config_fields(config_cls):
        spec = {"name": f.name, "help": f.metadata.get("help", ""), "default": str(field_default(f)),
                **type_spec(hints.get(f.name)), **{k: f.metadata[k] for k in RANGE_KEYS if k in f.metadata}}
        if range_of(spec) and spec["type"] not in ("int", "float"):
            raise TypeError(f"{config_cls.__name__}.{f.name}: a range needs an int or float field")
        specs.append(spec)
    return tuple(specs)


def range_of(spec: dict) -> dict:
    """The declared bounds of ``spec`` (``{}`` when it has none)."""
    return {k: spec[k] for k in RANGE_KEYS if k in spec}


# --- the one check -------------------------------------------------------------------------------------
def check_field(owner: str, spec: dict, value: Any) -> Any:
    """``value`` checked against the field declaration ``spec`` (from :func:`field_specs` or the catalogue):
    its type and choices (:func:`coerce_value`), then its range. Returns the coerced value; a bad value
    raises one :class:`SmallsetError` sentence naming the field (``option``). ``owner`` names the method in
    type sentences."""
    name = spec["name"]
    hint = hint_of(spec)
    if hint is not None:
        value = coerce_value(owner, name, value, hint)
    bounds = range_of(spec)
    if bounds and not in_range(value, bounds):
        raise SmallsetError(f"{name} {range_words(bounds)}; got {value}.", option=name)
    return value


def in_range(value: Any, bounds: dict) -> bool:
    """Whether ``value`` lies within ``bounds`` (NaN never does)."""
    tests = {"ge": lambda b: value >= b, "gt": lambda b: value > b, "le": lambda b: value <= b,
             "lt": lambda b: value < b}
    return all(tests[k](b) for k, b in bounds.items())


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def range_words(bounds: dict) -> str:
    """What a value of ``bounds`` must be, as the sentences say it: "must be positive", "cannot be
    negative", "must be at least 1", "must lie in [0, 1)"…"""
    low = next(((k, bounds[k]) for k in ("ge", "gt") if k in bounds), None)
    high = next(((k, bounds[k]) for k in ("le", "lt") if k in bounds), None)
    if low and high:
        return (f"must lie in {'[' if low[0] == 'ge' else '('}{_number(low[1])}, "
                f"{_number(high[1])}{']' if high[0] == 'le' else ')'}")
    if low:
        bound, b = low
        if b == 0:
            return "cannot be negative" if bound == "ge" else "must be positive"
        return f"must be at least {_number(b)}" if bound == "ge" else f"must be greater than {_number(b)}"
    bound, b = high
    return f"must be at most {_number(b)}" if bound == "le" else f"must be less than {_number(b)}"


def check_config_fields(config: Any, owner: str = "") -> None:
    """Every field of ``config`` (a config dataclass, possibly built by hand) against its declaration: the
    first bad field raises :func:`check_field`'s sentence. ``owner`` (default: the class's name) names the
    method."""
    owner = owner or type(config).__name__
    for spec in field_specs(type(config)):
        check_field(owner, spec, getattr(config, spec["name"]))


def check_known(owner: str, known: list[str], overrides: dict) -> None:
    """Refuse override names that are not fields, listing the fields."""
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise SmallsetError(
            f"Method {owner!r} has no option {', '.join(unknown)}; its options are: {', '.join(known) or 'none'}."
        )


# --- building a config from loose values -----------------------------------------------------------------
def coerce_config(owner: str, config_cls: type, overrides: dict | None, base: Any = None) -> Any:
    """``base`` (default: ``config_cls()``) with ``overrides`` applied, each coerced to its field's type.

    ``owner`` names the method in error sentences. Unknown fields and values that do not fit their type
    raise :class:`SmallsetError` naming the field; ``None`` values are ignored (they mean "the default").
    Ranges are checked afterwards, on the whole config (``Method.check_config``).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_known(owner, [f.name for f in config_fields(config_cls)], overrides)
    config = base if base is not None else config_cls()
    hints = typing.get_type_hints(config_cls)
    for key, value in overrides.items():
        setattr(config, key, coerce_value(owner, key, value, hints.get(key)))
    return config


def coerce_value(owner: str, key: str, value: Any, hint: Any) -> Any:
    """One value for the field ``key`` of type ``hint``: strings are parsed, non-finite floats refused."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise SmallsetError(f"{key} of {owner} must be one of {', '.join(map(str, choices))}, not {value!r}.",
                                option=key)
        return value
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            number = float(value)
            if not math.isfinite(number):
                raise SmallsetError(f"{key} of {owner} must be a finite number, not {value!r}.", option=key)
            return number
        if hint is str:
            return str(value)
        if isinstance(value, str):  # a list or tuple option given as JSON, e.g. [60,120]
            parsed = json.loads(value)
            return tuple(parsed) if origin is tuple and isinstance(parsed, list) else parsed
    except (TypeError, ValueError, OverflowError):
        name = getattr(hint, "__name__", str(hint))
        article = "an" if name[:1] in ("a", "e", "i", "o", "u") else "a"
        raise SmallsetError(f"{key} of {owner} must be {article} {name} (lists as JSON, e.g. [1,2]), not "
                            f"{value!r}.", option=key) from None
    return value
