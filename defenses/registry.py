"""The defense registry, plus loading a defense from a user's file or package.

``--defense NAME`` looks in, in order: the built-in registry, the
``rfbench.defenses`` entry-point group (installed plugin packages), and
``module.path:ClassName`` or ``path/to/file.py:ClassName`` (a defense in a
user's own code).  Loading from a file executes that file: it is explicit,
never implicit (an entry JSON cannot name code to run).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any

from benchmark.config import from_dict
from benchmark.errors import ConfigError, UnknownNameError
from benchmark.registry import Registry
from defenses.base import Defense, TrainContext

DEFENSES: Registry[type[Defense]] = Registry("defense")
ENTRY_POINT_GROUP = "rfbench.defenses"


def register_defense(name: str):
    """Class decorator: register a :class:`Defense` subclass under ``name``."""

    def deco(cls: type[Defense]) -> type[Defense]:
        cls.name = name
        return DEFENSES.register(name)(cls)

    return deco


def _entry_points() -> dict[str, Any]:
    try:
        return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # broken metadata must not break the built-ins
        return {}


def list_defenses(pattern: str = "*") -> list[str]:
    """Built-in and entry-point defense names."""
    import fnmatch

    return sorted(set(DEFENSES.names(pattern)) | {n for n in _entry_points() if fnmatch.fnmatch(n, pattern)})


def _import_target(spec: str) -> Any:
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py") or "/" in mod_name:
            path = Path(mod_name).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"defense file not found: {path}")
            name = f"rfbench_user_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import defense module '{mod_name}': {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"'{mod_name}' has no attribute '{attr}'") from None


def get_defense_class(name: str) -> type[Defense]:
    """Resolve a defense name, entry point, or ``module:Class`` spec to its class."""
    if name in DEFENSES:
        return DEFENSES.get(name)
    eps = _entry_points()
    if name in eps:
        cls = eps[name].load()
    elif ":" in name:
        cls = _import_target(name)
    else:
        raise UnknownNameError("defense", name, list_defenses())
    if not (isinstance(cls, type) and issubclass(cls, Defense)):
        raise ConfigError(f"'{name}' is not a subclass of defenses.base.Defense")
    return cls


def build_defense(name: str, args: dict, ctx: TrainContext) -> Defense:
    """Instantiate a defense with hyper-parameters ``args`` validated against its ``Config``."""
    cls = get_defense_class(name)
    cfg = from_dict(cls.Config, args or {}, where=f"defense '{name}'")
    return cls(cfg, ctx)
