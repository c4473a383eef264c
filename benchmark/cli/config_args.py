"""Argparse flags generated from a config dataclass, and the precedence rules.

Precedence, lowest to highest: dataclass defaults < ``--config FILE.yaml`` <
explicit flags < trailing ``key=value`` overrides (dotted keys reach into
mappings, e.g. ``defense_args.beta=6``).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from rfbench.core.config import apply_overrides, from_dict, load_yaml, parse_number
from rfbench.core.errors import ConfigError


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) and args else tp


def add_config_flags(parser: argparse.ArgumentParser, cls: type, help_text: dict[str, str]) -> None:
    """One ``--flag`` per field of ``cls`` (mappings are set through ``key=value`` overrides)."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    group = parser.add_argument_group("config keys (flags override --config; key=value overrides win)")
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        if typing.get_origin(tp) is dict or tp is dict:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = help_text.get(f.name, "")
        extra = f" [default: {default}]" if default not in (None, [], {}) else ""
        if "choices" in f.metadata:
            extra = f" {{{','.join(f.metadata['choices'])}}}" + extra
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text + extra, "dest": f.name}
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is list:
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            if "choices" in f.metadata:  # a set of options: repeatable, each a comma list
                kwargs["help"] += " (comma-separated, repeatable)"
                group.add_argument(flag, type=_comma_list(inner), metavar="A,B,...", action="extend", **kwargs)
            else:
                kwargs["help"] += " (comma-separated)"
                group.add_argument(flag, type=_comma_list(inner), metavar="A,B,...", **kwargs)
        else:
            conv = {float: _number, int: int}.get(tp, str)
            group.add_argument(flag, type=conv, metavar=f.name.upper(), **kwargs)


def _comma_list(inner: type):
    """``"75,90"`` -> ``[75, 90]`` (an empty string is an empty list)."""

    def parse(text: str) -> list:
        return [inner(t) for t in text.split(",") if t.strip()]

    parse.__name__ = f"list of {inner.__name__}"
    return parse


def _number(text: str) -> float:
    """Floats, also written as fractions: ``8/255`` (argparse's side of ``benchmark.config.parse_number``)."""
    try:
        return parse_number(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_number.__name__ = "number"


def resolve_config(cls: type, args: argparse.Namespace, config_path: str | None, overrides: list[str]) -> Any:
    """Merge defaults, YAML, flags and overrides, then validate into ``cls``."""
    data: dict[str, Any] = load_yaml(config_path) if config_path else {}
    names = {f.name for f in dataclasses.fields(cls)}
    for name in names:
        if name in vars(args):
            data[name] = getattr(args, name)
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, where="config")
