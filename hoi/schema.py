"""Typed option schemas: one dataclass per option group is the single source of each option's
default, type, allowed values and help text. Config files are checked against it (unknown keys
and wrong types fail naming the key) and command lines get their flags from it.

A schema is a dataclass whose fields carry `option(default, help, check=..., flags=...)`.
Values are checked strictly before OmegaConf sees them, because OmegaConf converts "4" to 4
and "true" to True, which would hide a mistyped YAML value.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Callable, Literal

from omegaconf import DictConfig, OmegaConf


def option(default: Any, help: str = "", check: Callable[[Any], bool] | None = None, rule: str = "",
           flags: tuple[str, ...] = (), cli: bool = True) -> Any:
    """A schema field. `check(value)` -> bool guards the range (`rule` says it in words, e.g.
    ">= 1"); `flags` are extra command-line spellings; `cli=False` keeps it out of the flags."""
    meta = {"help": help, "check": check, "rule": rule, "flags": flags, "cli": cli}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _field_types(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _describe(kind) -> str:
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind))


def _coerce(kind, value):
    """`value` as `kind`, or raise TypeError. Ints pass as floats; nothing else is converted."""
    if typing.get_origin(kind) is Literal:
        if value in typing.get_args(kind) and not isinstance(value, bool):
            return value
        raise TypeError
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeError
    if kind in (int, str):
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        raise TypeError
    if kind in (list, tuple) or typing.get_origin(kind) in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise TypeError
    return value  # nested or free-form values are checked by their own code


def check_options(schema: type, values: dict | DictConfig | None, where: str) -> DictConfig:
    """`values` over the schema's defaults, as a typed OmegaConf node. Raises ValueError naming
    `where.key` for an unknown key, a wrong type or a value out of range."""
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    values = dict(values or {})
    kinds = _field_types(schema)
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown option; known: {', '.join(sorted(kinds))}")
    checked = {}
    for f in dataclasses.fields(schema):
        if f.name not in values:
            continue
        value = values[f.name]
        if kinds[f.name] is float and isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}.{f.name} = {value!r}: must be a finite number")
        try:
            value = _coerce(kinds[f.name], value)
        except TypeError:
            raise ValueError(f"{where}.{f.name} = {value!r}: expected {_describe(kinds[f.name])}") from None
        check = f.metadata.get("check")
        if check is not None and not check(value):
            rule = f.metadata.get("rule")
            raise ValueError(f"{where}.{f.name} = {value!r}: out of range" + (f" (must be {rule})" if rule else ""))
        checked[f.name] = value
    return OmegaConf.merge(OmegaConf.structured(schema), checked)


def defaults(schema: type) -> dict:
    """The schema's defaults as a plain dict."""
    return OmegaConf.to_container(OmegaConf.structured(schema))


def str2bool(value) -> bool:
    text = str(value).lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_flags(parser: argparse.ArgumentParser | Any, schema: type, only: tuple[str, ...] | None = None,
              default_note: str = "default") -> list[str]:
    """One `--name` flag per schema field (or per field in `only`), typed and documented from the
    schema. Every flag defaults to None, meaning "not given": the config's value stands.
    Returns the field names added."""
    kinds = _field_types(schema)
    added = []
    for f in dataclasses.fields(schema):
        if (only is not None and f.name not in only) or not f.metadata.get("cli", True):
            continue
        kind, meta = kinds[f.name], f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = meta.get("help", "")
        help_text = (help_text + " " if help_text else "") + f"({default_note}: {default!r})"
        extra: dict[str, Any] = {}
        if typing.get_origin(kind) is Literal:
            extra["choices"] = list(typing.get_args(kind))
        elif kind is bool:
            extra.update(type=str2bool, nargs="?", const=True, metavar="true|false")
        elif kind in (int, float, str):
            extra["type"] = kind
        else:
            continue  # lists and nested values are set in the config file
        parser.add_argument(f"--{f.name}", *meta.get("flags", ()), dest=f.name, default=None,
                            help=help_text.replace("%", "%%"), **extra)
        added.append(f.name)
    return added


def flag_name(schemas: tuple[type, ...], name: str) -> str:
    """The spelling of field `name`'s flag that the help and the README give (its first extra
    spelling, e.g. --scheduled-sampling, else --name)."""
    for schema in schemas:
        for f in dataclasses.fields(schema):
            if f.name == name:
                flags = f.metadata.get("flags", ())
                return flags[0] if flags else f"--{name}"
    return f"--{name}"


def given_flags(args: argparse.Namespace, names: list[str]) -> dict:
    """The flags of `add_flags` that were given on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
