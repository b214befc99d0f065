"""YAML -> nested dataclasses, with dotted `key=value` overrides; unknown keys and wrong types are errors.

Validation happens here, at the boundary, before any model is loaded. PyYAML reads `1e-4` as a string and
`~`/`null` as None, so values are coerced to the field's annotated type; a value that cannot be coerced is
an error naming the key.

    cfg = load_config(DistillConfig, "alignkd/configs/synth_distill.yaml", ["optim.lr=1e-3", "max_steps=10"])
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path

import yaml

from alignkd.errors import AlignKDError


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except AlignKDError as err:
                errors.append(str(err))
        raise AlignKDError(f"config key {key!r}: {value!r} is not a valid {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise AlignKDError(f"config key {key!r} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise AlignKDError(f"config key {key!r}: {value!r} is not one of {', '.join(m.value for m in tp)}") from None
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise AlignKDError(f"config key {key!r} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise AlignKDError(f"config key {key!r} must be a list of {len(args)} values, got {value!r}")
        inner = args[0] if args else str
        return type(value)(_coerce(v, inner, key) for v in value) if origin is list else tuple(_coerce(v, inner, key) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise AlignKDError(f"config key {key!r} must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise AlignKDError(f"config key {key!r} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise AlignKDError(f"config key {key!r} must be a number, got {value!r}")
        try:
            number = float(value) if tp is float else int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise AlignKDError(f"config key {key!r} must be {'a number' if tp is float else 'an integer'}, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise AlignKDError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a mapping, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise AlignKDError(f"unknown config key {prefix + unknown[0]!r}; valid keys here: {', '.join(prefix + k for k in fields)}")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise AlignKDError(f"config {prefix.rstrip('.') or cls.__name__}: {err}") from err


def to_dict(obj) -> dict:
    """Plain-data form (enums as values, paths as strings) for saving next to a run."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(obj)


def apply_override(data: dict, override: str) -> None:
    """`a.b.c=value` sets data["a"]["b"]["c"] (value parsed as YAML, so numbers and lists work)."""
    if "=" not in override:
        raise AlignKDError(f"override {override!r} is not key=value (e.g. optim.lr=1e-4)")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise AlignKDError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(cls, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()):
    """Read YAML `path` (or start empty), apply overrides, validate into `cls`."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AlignKDError(f"config file {path} does not exist; pass a YAML file (shipped presets are in alignkd/configs/)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise AlignKDError(f"config file {path} is not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise AlignKDError(f"config file {path} must hold a mapping at the top level")
    for override in overrides:
        apply_override(data, override)
    return from_dict(cls, data)
