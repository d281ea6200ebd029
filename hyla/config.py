"""Shared config helpers: one error type, YAML I/O with precise messages, strict typed-dataclass parsing.

Field metadata that `from_mapping` reads: ``{"choices": (...)}`` restricts a value; `tagged` makes a field a tagged
union (a mapping whose ``family`` key, or another tag, picks the dataclass its other keys are parsed into).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad user input. The message is one line naming the file/field, the value and what is allowed."""


def did_you_mean(value: Any, allowed: Iterable[Any]) -> str:
    """`` (did you mean 'recall'?)`` for the allowed name closest to a typo, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(data: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    """Refuse unknown keys (typos), suggesting the closest allowed name."""
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown field {key!r}{did_you_mean(key, sorted(allowed))}; "
                              f"allowed: {', '.join(sorted(allowed))}")


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing file or malformed YAML becomes a one-line ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: malformed YAML{at}: {problem}") from None


def dump_yaml(data: Any, path: str | Path) -> None:
    """Write YAML atomically (a temp file renamed into place, so a crash never leaves half a file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
    tmp.replace(p)


def tagged(variants: Mapping[str, type], tag: str = "family") -> dict[str, Any]:
    """Field metadata of a tagged union: the field's mapping names its variant under ``tag`` (a key of
    ``variants``, did-you-mean on a typo) and its other keys are that variant dataclass's fields. ``None`` stays
    None; an instance of a variant is kept. `to_mapping` writes the tag back. ``variants`` may grow after the
    field is declared (a registry)."""
    return {"variants": variants, "tag": tag}


def _parse_tagged(value: Any, variants: Mapping[str, type], tag: str, where: str) -> Any:
    if value is None or isinstance(value, tuple(variants.values())):
        return value
    names = ", ".join(variants)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping with {tag!r} ({names}), got {value!r}")
    data = dict(value)
    name = data.pop(tag, None)
    if name is None:
        raise ConfigError(f"{where}.{tag}: missing; expected one of {names}")
    if name not in variants:
        close = difflib.get_close_matches(str(name), list(variants), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}.{tag}: {name!r} is not allowed{hint}; expected one of {names}")
    cls = variants[name]
    return cls.from_dict(data, where=where) if hasattr(cls, "from_dict") else from_mapping(cls, data, where)


def variant_name(value: Any, variants: Mapping[str, type]) -> str:
    """The tag of a tagged union's value (the key of its dataclass in ``variants``)."""
    return next(name for name, cls in variants.items() if type(value) is cls)


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from a mapping: unknown keys refused, nested dataclasses parsed, simple types checked.

    Fields may declare ``metadata={"choices": (...)}`` to restrict values, or `tagged` metadata (a tagged union).
    """
    data = dict(data or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    flds = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, set(flds), where)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        meta = flds[name].metadata
        if "variants" in meta:
            kwargs[name] = _parse_tagged(value, meta["variants"], meta["tag"], f"{where}.{name}")
            continue
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
        choices = flds[name].metadata.get("choices")
        if choices is not None and kwargs[name] not in choices:
            raise ConfigError(f"{where}.{name}: {value!r} is not allowed; expected one of {', '.join(map(str, choices))}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field
        raise ConfigError(f"{where}: {e}") from None


def to_mapping(obj: Any) -> Any:
    """Dataclass (possibly nested) → plain dict/list data suitable for YAML/JSON (a dataclass's own ``to_dict`` wins)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return obj.to_dict()
        return fields_to_mapping(obj)
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj


def fields_to_mapping(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields as plain data (a tagged union's value with its tag first)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "variants" in f.metadata and value is not None:
            out[f.name] = {f.metadata["tag"]: variant_name(value, f.metadata["variants"]), **to_mapping(value)}
        else:
            out[f.name] = to_mapping(value)
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if hasattr(tp, "from_dict"):
            return tp.from_dict(value, where=where)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_mapping(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is float and not isinstance(value, float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return value
