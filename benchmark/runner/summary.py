"""Aggregate finished runs over seeds: mean ± std of every summary number, per grid cell and checkpoint.

Computed only from the runs' ``result.json`` files, so a sweep's summary is
the same whichever executor produced them.  ``std`` is the sample standard
deviation over seeds (ddof = 1; 0 for a single seed).  Accuracies are
fractions here and percentages in the markdown rendering.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from rfbench.core.io import read_json
from rfbench.core.perclass import pct

#: summary metrics of one checkpoint: (column name, result name, summary field)
BASE_METRICS = (("clean", "clean", "mean"), ("clean_worst", "clean", "worst"),
                ("robust", "worst_case", "mean"), ("robust_worst", "worst_case", "worst"),
                ("robust_gap", "worst_case", "gap"), ("robust_tail20", "worst_case", "tail20"))


def checkpoint_metrics(block: dict[str, Any]) -> dict[str, float]:
    """Flat metrics of one checkpoint block of a ``rfbench.run/1`` result (plus each attack's mean)."""
    s = block["summary"]
    out = {col: float(s[name][stat]) for col, name, stat in BASE_METRICS}
    out.update({f"{a}": float(s[a]["mean"]) for a in block["attacks"]})
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def per_run_frame(entries: Iterable[tuple[dict[str, Any], str | Path]]) -> pd.DataFrame:
    """One row per (run, checkpoint): the grid key, the run directory and the flat metrics."""
    rows = []
    for key, out in entries:
        result = read_json(Path(out) / "result.json")
        for which, block in result["checkpoints"].items():
            rows.append({**key, "checkpoint": which, "run_dir": str(out), **checkpoint_metrics(block)})
    return pd.DataFrame(rows)


def aggregate(per_run: pd.DataFrame, group_keys: list[str]) -> list[dict[str, Any]]:
    """Per group (``group_keys`` + checkpoint): ``{metric: {mean, std, n, values}}``, in a deterministic order."""
    if per_run.empty:
        return []
    keys = [*group_keys, "checkpoint"]
    metric_cols = [c for c in per_run.columns if c not in (*keys, "seed", "run_dir")]
    groups = []
    for values, df in per_run.sort_values([*keys, "seed"] if "seed" in per_run else keys).groupby(keys, sort=True, dropna=False):
        row: dict[str, Any] = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        row["seeds"] = [int(s) for s in df["seed"]] if "seed" in df else []
        metrics = {}
        for col in metric_cols:
            vals = [float(v) for v in df[col] if not pd.isna(v)]
            if vals:
                m, s = mean_std(vals)
                metrics[col] = {"mean": m, "std": s, "n": len(vals), "values": vals}
        row["metrics"] = metrics
        groups.append(row)
    return groups


def summary_markdown(groups: list[dict[str, Any]], group_keys: list[str],
                     metrics: tuple[str, ...] = ("clean", "robust", "robust_worst", "robust_gap")) -> str:
    """Mean ± std over seeds in percent, one line per group and checkpoint."""
    rows = []
    for g in groups:
        row = {k: g[k] for k in (*group_keys, "checkpoint")}
        row["seeds"] = len(g["seeds"])
        for m in metrics:
            v = g["metrics"].get(m)
            row[m.replace("_", " ")] = f"{pct(v['mean'])} ± {pct(v['std'])}" if v else "-"
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False) if rows else "(no finished runs)"
