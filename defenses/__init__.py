"""Defenses: the plugin interface (:mod:`rfbench.defenses.base`) and the built-in methods.

Importing this package registers every built-in defense.
"""

from rfbench.defenses import at_bsl as _at_bsl  # noqa: F401
from rfbench.defenses import awp as _awp  # noqa: F401
from rfbench.defenses import cb_at as _cb_at  # noqa: F401
from rfbench.defenses import cfa as _cfa  # noqa: F401
from rfbench.defenses import cfol as _cfol  # noqa: F401
from rfbench.defenses import class_weights as _class_weights  # noqa: F401
from rfbench.defenses import dafa as _dafa  # noqa: F401
from rfbench.defenses import frl as _frl  # noqa: F401
from rfbench.defenses import mart as _mart  # noqa: F401
from rfbench.defenses import reat as _reat  # noqa: F401
from rfbench.defenses import robal as _robal  # noqa: F401
from rfbench.defenses import robustlt as _robustlt  # noqa: F401
from rfbench.defenses import standard as _standard  # noqa: F401
from rfbench.defenses import taet as _taet  # noqa: F401
from rfbench.defenses import trades as _trades  # noqa: F401
from rfbench.defenses import wat as _wat  # noqa: F401
from rfbench.defenses.base import Defense, EpochStats, LossOutput, Threat, TrainContext, WeightAverages
from rfbench.defenses.registry import DEFENSES, build_defense, get_defense_class, list_defenses, register_defense

__all__ = [
    "DEFENSES",
    "Defense",
    "EpochStats",
    "LossOutput",
    "Threat",
    "TrainContext",
    "WeightAverages",
    "build_defense",
    "get_defense_class",
    "list_defenses",
    "register_defense",
]
