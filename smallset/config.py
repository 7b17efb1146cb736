"""Typed method configs: one dataclass per method, its fields the paper's hyperparameters.

A field is declared with :func:`option`, which records its help text and whether it changes the
method's cacheable preparation (``prepare=True``: scores, features, expert trajectories…). The
preparation cache key is derived from that metadata (:func:`prepare_params`), so a new option can never
be forgotten in a hand-kept list. :func:`coerce_config` builds a config from loose values (strings from a
command line, JSON from a deployment) with one error sentence that names the field, never a CLI flag.
"""
from __future__ import annotations

import json
import math
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any

from smallset.errors import SmallsetError


@dataclass
class NoConfig:
    """A method without hyperparameters."""


def option(default: Any = MISSING, help: str = "", *, prepare: bool = False, default_factory: Any = MISSING) -> Any:
    """A config field with its help text; ``prepare=True`` when it changes the method's preparation."""
    meta = {"help": help, "prepare": prepare}
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


def coerce_config(owner: str, config_cls: type, overrides: dict | None, base: Any = None) -> Any:
    """``base`` (default: ``config_cls()``) with ``overrides`` applied, each coerced to its field's type.

    ``owner`` names the method in error sentences. Unknown fields and values that do not fit their type
    raise :class:`SmallsetError` naming the field; ``None`` values are ignored (they mean "the default").
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name: f for f in config_fields(config_cls)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise SmallsetError(
            f"Method {owner!r} has no option {', '.join(unknown)}; its options are: {', '.join(known) or 'none'}."
        )
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
            raise SmallsetError(f"{key} of {owner} must be one of {', '.join(map(str, choices))}, not {value!r}.", option=key)
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
        raise SmallsetError(f"{key} of {owner} must be a {name} (lists as JSON, e.g. [1,2]), not {value!r}.",
                            option=key) from None
    return value
