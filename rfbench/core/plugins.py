"""Import a user's object from ``path/to/file.py:NAME`` or ``package.module:NAME``.

This executes the named file or module, so it runs only for a target the user
named on the command line (``--defense file.py:Class``, ``defense=...``) or
when the command line says ``--allow-code``.  A target met anywhere else (a
checkpoint, a run directory's ``config.yaml``, a run config, a grid, a track
file, a result or an entry) is refused with one line saying how to allow it;
registered names and installed entry points are unaffected.  The command line
records its permissions with :func:`allow_code` before any work starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from rfbench.core.errors import ConfigError

_ALLOWED: set[str] = set()
_ALLOW_ALL = False
#: the flags of the running command that name code (``--defense``, ``--model``); refusals suggest only these
_NAMING_FLAGS: set[str] = set()


def allow_code(targets: list[str] | tuple[str, ...] = (), *, everything: bool = False) -> None:
    """Permit importing ``targets`` (as the user typed them), or any target with ``everything``."""
    global _ALLOW_ALL
    _ALLOWED.update(targets)
    _ALLOW_ALL = _ALLOW_ALL or everything


def reset_allowed_code(naming_flags: tuple[str, ...] | list[str] = ()) -> None:
    """Forget every permission (for tests and for library callers between commands).

    ``naming_flags``: the flags of the command about to run that can name code
    (e.g. ``("--defense",)`` for ``rfbench train``), so a refusal suggests only a flag
    that command has.
    """
    global _ALLOW_ALL
    _ALLOWED.clear()
    _ALLOW_ALL = False
    _NAMING_FLAGS.clear()
    _NAMING_FLAGS.update(naming_flags)


def code_allowed(target: str) -> bool:
    """Whether ``target`` may be imported: named on the command line, or ``--allow-code`` given."""
    return _ALLOW_ALL or target in _ALLOWED


def import_target(target: str, kind: str) -> Any:
    """The object ``NAME`` of ``file.py:NAME`` or ``module:NAME``; ``kind`` words the errors ("defense", "model")."""
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"{kind} '{target}': expected path/to/file.py:NAME or package.module:NAME")
    if not code_allowed(target):
        naming = f" (or name it with --{kind} {target})" if f"--{kind}" in _NAMING_FLAGS else ""
        raise ConfigError(f"{kind} '{target}' is neither registered nor an installed plugin, and importing it would "
                          f"run code that was not named on the command line; pass --allow-code{naming} to run it")
    try:
        if where.endswith(".py") or "/" in where:
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"{kind} file not found: {path}")
            name = f"rfbench_user_{kind}_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {kind} module '{where}': {exc}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"'{where}' has no attribute '{attr}'")
    return getattr(module, attr)
