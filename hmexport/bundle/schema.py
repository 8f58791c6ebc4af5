"""Frozen dataclasses <-> JSON, with every unknown key and wrong type reported by its path.

Supports the field types the manifest uses: str, int, float, bool, Any, X | None, list[X],
tuple[X, ...], dict[str, X] and nested dataclasses. All failures are gathered, then raised once.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from ..errors import BundleError

T = TypeVar("T")


def to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def from_json(cls: type[T], data: Any, where: str) -> T:
    errors: list[str] = []
    value = _convert(cls, data, where, errors)
    if errors:
        head = errors[0] if len(errors) == 1 else f"{len(errors)} problems: " + "; ".join(errors)
        raise BundleError(head)
    return value


def _convert(tp: Any, data: Any, where: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if data is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _convert(inner[0], data, where, errors)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, data, where, errors)
    if origin in (list, tuple):
        if not isinstance(data, list):
            errors.append(f"{where}: expected a list, got {_kind(data)}")
            return data
        item = typing.get_args(tp)[0]
        items = [_convert(item, v, f"{where}[{i}]", errors) for i, v in enumerate(data)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(data, dict):
            errors.append(f"{where}: expected an object, got {_kind(data)}")
            return data
        item = typing.get_args(tp)[1]
        return {k: _convert(item, v, f"{where}.{k}", errors) for k, v in data.items()}
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
        errors.append(f"{where}: expected {tp.__name__}, got {_kind(data)} {data!r:.60}")
    return data


def _dataclass(cls: type, data: Any, where: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        errors.append(f"{where}: expected an object, got {_kind(data)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            errors.append(f"{where}: unknown key {key!r} (expected one of {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}", errors)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{where}: missing key {name!r}")
    if errors:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        errors.append(f"{where}: {exc}")
        return None


def _kind(data: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), type(data).__name__)
