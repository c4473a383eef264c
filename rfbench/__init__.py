"""rfbench: per-class robustness of adversarially trained models, by default.

The public Python API lives under this one name::

    import rfbench
    report = rfbench.evaluate(model, x_test, y_test, eps=8/255, attacks=["pgd", "autoattack"])
    report.per_class     # pandas DataFrame, one row per class (fractions)
    rfbench.evaluate_loader(model, loader, eps=8/255, version="standard")   # standard AutoAttack, per class
    rfbench.Report.load("runs/eval/result.json")

    rfbench.attacks      # the PGD core, named attacks, AutoAttack adapter, attack specs
    rfbench.defenses     # the Defense plugin interface and the built-in methods
    rfbench.datasets     # load_dataset, DataBundle, long-tailed splits
    rfbench.models       # create_model and the registered architectures
    rfbench.leaderboards # track checks, submission, page building

Submodules are imported on first use, so ``import rfbench`` is cheap.  The
harness itself (training, evaluation, CLI) is :mod:`rfbench.benchmark`.
"""

from __future__ import annotations

import importlib
from typing import Any

from rfbench.core.version import __version__

#: public attribute -> module that provides it (imported lazily, PEP 562)
_LAZY_MODULES = {
    "attacks": "rfbench.attacks",
    "defenses": "rfbench.defenses",
    "benchmark": "rfbench.benchmark",
    "datasets": "rfbench.datasets",
    "models": "rfbench.models",
    "leaderboards": "rfbench.leaderboards",
    "core": "rfbench.core",
}

#: public attribute -> (module, name) of a function or class (imported lazily too)
_LAZY_OBJECTS = {
    "evaluate": ("rfbench.benchmark.eval.api", "evaluate"),
    "evaluate_loader": ("rfbench.benchmark.eval.api", "evaluate_loader"),
    "Report": ("rfbench.benchmark.eval.api", "Report"),
    "EvalConfig": ("rfbench.benchmark.eval.harness", "EvalConfig"),
    "Threat": ("rfbench.core.threat", "Threat"),
    "load_dataset": ("rfbench.benchmark.data", "load_dataset"),
    "create_model": ("rfbench.models", "create_model"),
    "RfbenchError": ("rfbench.core.errors", "RfbenchError"),
}

__all__ = ["__version__", *_LAZY_MODULES, *_LAZY_OBJECTS]


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        module = importlib.import_module(_LAZY_MODULES[name])
        globals()[name] = module
        return module
    if name in _LAZY_OBJECTS:
        module_name, attr = _LAZY_OBJECTS[name]
        obj = getattr(importlib.import_module(module_name), attr)
        globals()[name] = obj
        return obj
    raise AttributeError(f"module 'rfbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
