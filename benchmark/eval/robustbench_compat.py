"""Import RobustBench's PyPI release (1.1.1) beside ``pyautoattack``, changing neither package's files.

robustbench 1.1.1 declares the dependency ``pyautoattack`` (which installs the module
``pyautoattack``), yet its ``robustbench/eval.py`` runs ``from autoattack import
AutoAttack`` and ``from autoattack.state import EvaluationState``, the module names of
AutoAttack's GitHub repository; and its ``robustbench/loaders.py`` runs ``import
pkg_resources``, which setuptools 81 and later no longer ship.  So ``import
robustbench`` fails in a fresh ``pip install robustbench`` environment.

:func:`import_robustbench` is the narrow compatibility step: only while
``robustbench`` is being imported, and only for a name that is not importable
otherwise, it puts into ``sys.modules``

* ``autoattack`` and ``autoattack.state`` as aliases of ``pyautoattack`` and
  ``pyautoattack.state`` (the same code under its PyPI name), and
* ``pkg_resources`` as a module with the one function robustbench uses,
  ``resource_filename(package, name)`` (through ``importlib.resources``; robustbench
  calls it only to list ImageNet files);

then takes them out again, so no other import in the process sees them (robustbench's
modules keep the references they bound).  An environment with AutoAttack's
GitHub package or an older setuptools is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import sys
import types
from typing import Any


def _resource_filename(package: str, name: str) -> str:
    """``pkg_resources.resource_filename`` for a file inside an installed (unzipped) package."""
    return str(importlib.resources.files(package).joinpath(name))


def _stand_ins() -> dict[str, types.ModuleType]:
    """The modules the import of robustbench 1.1.1 needs that this environment lacks."""
    out: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
        out["autoattack"] = importlib.import_module("pyautoattack")
        out["autoattack.state"] = importlib.import_module("pyautoattack.state")
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources", "rfbench's stand-in: resource_filename only (for robustbench.loaders)")
        shim.__dict__["resource_filename"] = _resource_filename
        out["pkg_resources"] = shim
    return out


def import_robustbench() -> Any:
    """``robustbench.utils`` (its model zoo's ``load_model``), imported with the stand-ins of the module docstring."""
    if sys.modules.get("robustbench") is not None and sys.modules.get("robustbench.utils") is not None:
        return sys.modules["robustbench.utils"]
    added = {k: v for k, v in _stand_ins().items() if k not in sys.modules}
    sys.modules.update(added)
    try:
        importlib.import_module("robustbench")  # the package itself first: a cached submodule does not prove it is there
        return importlib.import_module("robustbench.utils")
    finally:
        for k, v in added.items():
            if sys.modules.get(k) is v:
                del sys.modules[k]
