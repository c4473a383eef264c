"""Temperature-PGD sweeps in a result: the strongest temperature, and where it beats PGD of the same steps and eps.

The comparison with PGD counts the images each attack breaks alone (McNemar's discordant pairs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def t_sweep_summary(per_class: dict[str, np.ndarray], settings: dict[str, dict], robust: dict[str, np.ndarray],
                    y: np.ndarray, classes: list[str]) -> dict[str, Any] | None:
    """The strongest temperature of a Temperature-PGD sweep, and where it beats PGD of the same steps and eps."""
    tp = [lab for lab, s in settings.items() if s["name"] == "temperature-pgd" and s.get("tmode", "scalar") == "scalar"]
    if not tp:
        return None
    rows = sorted(({"T": settings[lab]["T"], "label": lab, "mean": float(np.nanmean(per_class[lab])),
                    "worst": float(np.nanmin(per_class[lab]))} for lab in tp), key=lambda r: r["T"])
    best = min(rows, key=lambda r: (r["mean"], r["worst"]))
    out: dict[str, Any] = {"values": rows, "strongest_T": best["T"], "strongest_label": best["label"]}
    s_best = settings[best["label"]]
    pgd_labs = [lab for lab, s in settings.items() if s["name"] == "pgd" and s.get("loss", "ce") == "ce"
                and all(s.get(k) == s_best.get(k) for k in ("steps", "norm", "restarts"))
                and math.isclose(float(s["eps"]), float(s_best["eps"]))]
    if pgd_labs:
        ref = pgd_labs[0]
        delta = per_class[best["label"]] - per_class[ref]
        b = int((robust[ref] & ~robust[best["label"]]).sum())  # broken by T-PGD only
        c = int((robust[best["label"]] & ~robust[ref]).sum())  # broken by PGD only
        order = np.argsort(delta)
        out["vs_pgd"] = {
            "pgd": ref, "mean_delta": float(np.nanmean(delta)),
            "worst_delta": float(np.nanmin(per_class[best["label"]]) - np.nanmin(per_class[ref])),
            "per_class_delta": delta.tolist(), "broken_only_by_tpgd": b, "broken_only_by_pgd": c,
            "mcnemar_z": (b - c) / math.sqrt(b + c) if b + c else 0.0,
            "largest_drops": [{"class": int(k), "name": classes[k], "delta": float(delta[k])} for k in order[:3] if delta[k] < 0],
        }
    return out
