"""rfbench: per-class robustness of adversarially trained models, by default.

The public Python API lives under this one name::

    import rfbench
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

__version__ = "0.2.0"

#: public attribute -> module that provides it (imported lazily, PEP 562)
_LAZY_MODULES = {
    "attacks": "rfbench.attacks",
    "defenses": "rfbench.defenses",
    "benchmark": "rfbench.benchmark",
    "datasets": "rfbench.benchmark.data",
    "models": "rfbench.benchmark.models",
    "leaderboards": "rfbench.benchmark.leaderboard",
}

__all__ = ["__version__", *_LAZY_MODULES]


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        module = importlib.import_module(_LAZY_MODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'rfbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
