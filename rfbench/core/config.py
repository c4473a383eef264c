"""Typed dataclass configs: YAML defaults, ``key=value`` overrides, strict validation.

Precedence (lowest to highest): dataclass defaults < YAML file < explicit CLI
flags < ``key=value`` overrides.  Every problem is one line naming the key and
what was expected::

    config: unknown key 'epoch' (did you mean 'epochs'?); valid keys: ...
    config: 'eps' must be a number in [0, 1], got -0.1

Field constraints live in the dataclass field metadata, e.g.
``field(default=0.1, metadata=in_range(0, 1))`` or ``metadata=choice("sgd", "adam")``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rfbench.core.errors import ConfigError

T = TypeVar("T")


def in_range(low: float | None = None, high: float | None = None) -> dict:
    """Field metadata: the value must lie in ``[low, high]`` (either bound optional)."""
    return {"range": (low, high)}


def choice(*options: str) -> dict:
    """Field metadata: the value must be one of ``options``."""
    return {"choices": options}


# PyYAML's safe loader raises these (not YAMLError) for a bad scalar such as
# ``2001-02-30`` or ``!!int x``, and RecursionError for absurdly deep nesting.
YAML_VALUE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)


def _yaml_value_problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"bad value ({text})"


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"malformed YAML in {path}: not UTF-8 text") from None
    except YAML_VALUE_ERRORS as exc:
        raise ConfigError(f"malformed YAML in {path}: {_yaml_value_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> ``(["a", "b"], value)`` with the value parsed as YAML (so ``1e-3`` is a number)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, *YAML_VALUE_ERRORS):
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with every ``key=value`` override applied (dotted keys nest)."""
    out = dict(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
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
                return _coerce(value, a, key, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{where}: '{key}' has an unsupported type")
    if tp is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {_brief(value)}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {_brief(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {_brief(value)}")
        return from_dict(tp, value, where=f"{where}.{key}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' must be true or false, got {_brief(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: '{key}' must be an integer, got {_brief(value)}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = _to_float(value)
        elif isinstance(value, str):  # allow fractions such as 8/255
            number = _parse_fraction(value)
        if number is not None and math.isfinite(number):
            return number
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {_brief(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: '{key}' must be a string, got {_brief(value)}")
    return value


def _to_float(value: int | float) -> float | None:
    """``float(value)``, or None for an integer too large for a float."""
    try:
        return float(value)
    except OverflowError:
        return None


def parse_number(value: Any) -> float:
    """The one reader of numbers written as fractions: ``"8/255"`` -> 0.0313..., ``"0.1"``, ``2`` -> floats.

    Every place that accepts ``8/255`` (config values, ``--eps``/``--alpha``/``--t-sweep``
    flags, attack specs) uses this.  A zero denominator or a non-number is a
    :class:`ConfigError`; ranges (finite, >= 0, ...) are checked by the callers' fields.
    """
    if isinstance(value, bool):
        raise ConfigError(f"'{value}' is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    num, sep, den = text.partition("/")
    try:
        a, d = (float(num), float(den)) if sep else (float(text), 1.0)
    except (ValueError, OverflowError):
        raise ConfigError(f"{_brief(text)} is not a number (expected e.g. 0.03 or 8/255)") from None
    if d == 0:
        raise ConfigError(f"{_brief(text)}: division by zero")
    return a / d


def _parse_fraction(text: str) -> float | None:
    """``"8/255"`` -> 0.0313...; anything else -> None."""
    try:
        return parse_number(text)
    except ConfigError:
        return None


def _brief(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened so a huge value cannot flood the one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(value: Any, f: dataclasses.Field, where: str) -> None:
    meta = f.metadata
    if value is None:
        return
    if "range" in meta:
        lo, hi = meta["range"]
        vals = value if isinstance(value, list) else [value]
        for v in vals:
            if not isinstance(v, (int, float)) or (lo is not None and v < lo) or (hi is not None and v > hi):
                bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ConfigError(f"{where}: '{f.name}' must be a number in {bounds}, got {_brief(value)}")
    if "choices" in meta and any(v not in meta["choices"] for v in (value if isinstance(value, list) else [value])):
        raise ConfigError(f"{where}: '{f.name}' must be one of {', '.join(map(str, meta['choices']))}; got {_brief(value)}")


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types or ranges."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key {_brief(str(key))}{hint}; valid keys: {', '.join(sorted(fields)) or '(none)'}")
        v = _coerce(value, hints[key], key, where)
        _check(v, fields[key], where)
        kwargs[key] = v
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> dict:
    """A dataclass as a plain dict (for YAML/JSON output)."""
    return dataclasses.asdict(obj)


def dump_yaml(obj: Any) -> str:
    """A dataclass or dict as YAML text, keys in declaration order."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return yaml.safe_dump(data, sort_keys=False)
