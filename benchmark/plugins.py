"""Import a user's object from ``path/to/file.py:NAME`` or ``package.module:NAME``.

This executes the named file or module: callers use it only when the user
named the target explicitly on the command line or in their own config,
never from a result file or a leaderboard entry.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from rfbench.benchmark.errors import ConfigError


def import_target(target: str, kind: str) -> Any:
    """The object ``NAME`` of ``file.py:NAME`` or ``module:NAME``; ``kind`` words the errors ("defense", "model")."""
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"{kind} '{target}': expected path/to/file.py:NAME or package.module:NAME")
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
