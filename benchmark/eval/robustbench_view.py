"""The RobustBench-style block of a result, kept apart from rfbench's own per-class numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.core.threat import NORM_NAMES, Threat, format_eps

RB_CONVENTION = ("RobustBench-style fields (Croce et al., NeurIPS 2021 Datasets and Benchmarks), as fractions: "
                 "clean_acc = clean accuracy over all evaluated images (not class-balanced); autoattack_acc = fraction "
                 "clean-correct and robust to standard AutoAttack (only a version=standard run fills it; with "
                 "scope 'survivors' it ran on the points robust to the attacks before it, so it is also robust to those)")

def is_standard_autoattack(s: dict) -> bool:
    """AutoAttack as RobustBench runs it: ``version=standard`` with none of its counts overridden."""
    return (s.get("name") == "autoattack" and s.get("version") == "standard"
            and all(s.get(k) is None for k in ("steps", "queries", "restarts", "targets")))


def robustbench_block(flags: SampleFlags, settings: dict[str, dict], threat: Threat, robust: dict[str, np.ndarray],
                      worst_over: list[str], source: dict | None) -> dict[str, Any]:
    """The RobustBench-style fields, apart from rfbench's per-class numbers (convention in :data:`RB_CONVENTION`)."""
    aa = [lab for lab in worst_over if is_standard_autoattack(settings[lab])]
    s = settings[aa[0]] if aa else {}
    return {
        "convention": RB_CONVENTION,
        "clean_acc": float(flags.clean_correct.mean()),
        "autoattack_acc": float(robust[aa[0]].mean()) if aa else None,
        "autoattack_label": aa[0] if aa else None,
        "autoattack_version": s.get("version"),
        "autoattack_scope": s.get("scope"),
        "autoattack_package": (s.get("effective") or {}).get("package"),
        "eps": format_eps(threat.eps),
        "threat_model": NORM_NAMES[threat.norm],
        "architecture": (source or {}).get("architecture"),
        "additional_data": (source or {}).get("additional_data"),
    }
