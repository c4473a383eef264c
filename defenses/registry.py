"""The defense registry, plus loading a defense from a user's file or package.

``--defense NAME`` looks in, in order: the built-in registry, the
``rfbench.defenses`` entry-point group (installed plugin packages), and
``module.path:ClassName`` or ``path/to/file.py:ClassName`` (a defense in a
user's own code).  Loading from a file executes that file: it is explicit,
never implicit (an entry JSON cannot name code to run).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Callable, TypeVar

from rfbench.core.config import from_dict
from rfbench.core.errors import ConfigError, UnknownNameError
from rfbench.core.plugins import import_target
from rfbench.core.registry import Registry
from rfbench.defenses.base import Defense, TrainContext

DEFENSES: Registry[type[Defense]] = Registry("defense")
ENTRY_POINT_GROUP = "rfbench.defenses"


D = TypeVar("D", bound=type[Defense])


def register_defense(name: str) -> Callable[[D], D]:
    """Class decorator: register a :class:`Defense` subclass under ``name`` (the class itself is returned)."""

    def deco(cls: D) -> D:
        cls.name = name
        DEFENSES.register(name)(cls)
        return cls

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


def get_defense_class(name: str) -> type[Defense]:
    """Resolve a defense name, entry point, or ``module:Class`` spec to its class."""
    if name in DEFENSES:
        return DEFENSES.get(name)
    eps = _entry_points()
    if name in eps:
        cls = eps[name].load()
    elif ":" in name:
        cls = import_target(name, "defense")
    else:
        raise UnknownNameError("defense", name, list_defenses())
    if not (isinstance(cls, type) and issubclass(cls, Defense)):
        raise ConfigError(f"'{name}' is not a subclass of defenses.base.Defense")
    return cls


def check_defense_name(name: str) -> None:
    """Fail fast, without importing anything, on a defense that could not be built.

    A registered or installed name passes; ``module:Class`` / ``file.py:Class``
    passes only when the command line named it or said ``--allow-code``
    (``benchmark.plugins``); anything else is the error ``build_defense`` would give.
    """
    from rfbench.core.plugins import code_allowed

    if name in DEFENSES or name in _entry_points():
        return
    if ":" not in name:
        raise UnknownNameError("defense", name, list_defenses())
    if not code_allowed(name):
        import_target(name, "defense")  # raises the one-line refusal


def build_defense(name: str, args: dict, ctx: TrainContext) -> Defense:
    """Instantiate a defense with hyper-parameters ``args`` validated against its ``Config``."""
    cls = get_defense_class(name)
    cfg = from_dict(cls.Config, args or {}, where=f"defense '{name}'")
    return cls(cfg, ctx)
