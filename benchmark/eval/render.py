"""Renderings of a result: the per-class DataFrame, the terminal's Markdown table, and the files an evaluation writes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from rfbench.benchmark.eval.result import SUMMARY_KEYS, as_result
from rfbench.benchmark.eval.summary_line import summary_line
from rfbench.core.io.atomic import atomic_write_json, atomic_write_text
from rfbench.core.perclass import pct


def per_class_frame(result: Mapping[str, Any]) -> pd.DataFrame:
    """Per-class accuracies (fractions) by class, one column per name, plus boundary error and weight norm."""
    df = pd.DataFrame({name: result["per_class"][name] for name in result["names"]})
    df.insert(0, "n", result["n_per_class"])
    df.insert(0, "class", result["classes"])
    df["boundary_error"] = result["boundary_error"]
    df["cfps_worst_case"] = result["cfps"]["worst_case"]
    if result.get("weight_norm"):
        df["weight_norm"] = result["weight_norm"]["per_class"]
    return df


CASCADE_NOTE = "AA on survivors"


def column_title(result: Mapping[str, Any], name: str) -> str:
    """A table header: the name, plus ``(AA on survivors)`` for a cascade attack that ran on the survivors only."""
    s = next((a for a in result.get("attacks", []) if a.get("label") == name), None)
    return f"{name} ({CASCADE_NOTE})" if s and s.get("scope") == "survivors" else name


def markdown_table(result: Mapping[str, Any]) -> str:
    """The per-class table in percent (via :func:`~rfbench.core.perclass.pct`), with mean / worst / gap /
    std / tail20 rows (for the terminal); an empty class shows as ``-``."""
    names = result["names"]
    rows = {c: [pct(v) for v in vals] for c, vals in zip(result["classes"], zip(*(result["per_class"][n] for n in names)))}
    for key in SUMMARY_KEYS:
        if key != "worst_class":
            rows[key] = [pct(result["summary"][n][key]) for n in names]
    df = pd.DataFrame.from_dict(rows, orient="index", columns=[column_title(result, n) for n in names])
    df.index.name = "class"
    table = df.to_markdown(colalign=("left", *["right"] * len(names)))
    foot = "\n" + summary_line(result)
    for inv in result.get("inventions") or []:
        foot += f"\n{inv['label']}: {inv['invention']}"
    ts = result.get("t_sweep")
    if ts:
        foot += f"\nT-PGD sweep: strongest T = {ts['strongest_T']:g} ({ts['strongest_label']})"
        vs = ts.get("vs_pgd")
        if vs:
            drops = ", ".join(f"{d['name']} {pct(d['delta'], sign=True)}" for d in vs["largest_drops"]) or "none"
            foot += (f"; vs {vs['pgd']}: mean {pct(vs['mean_delta'], sign=True)} points, worst class "
                     f"{pct(vs['worst_delta'], sign=True)}; largest drops: {drops}")
    return table + foot


def write_outputs(result: Mapping[str, Any], out_dir: str | Path, *, plot: bool = False) -> dict[str, Path]:
    """Write ``result.json``, ``per_class.csv``, ``per_class.md`` (and the plots); return their paths."""
    out_dir = Path(out_dir)
    result = as_result(result)  # validated before anything is written
    paths = {"json": out_dir / "result.json", "csv": out_dir / "per_class.csv", "md": out_dir / "per_class.md"}
    atomic_write_json(paths["json"], result.to_dict())
    atomic_write_text(paths["csv"], per_class_frame(result).to_csv(index_label="class_index"))
    atomic_write_text(paths["md"], markdown_table(result) + "\n")
    if plot:
        from rfbench.benchmark.eval.plots import plot_confusion_flow, plot_per_class

        paths["per_class_png"] = plot_per_class(result, out_dir / "per_class.png")
        paths["confusion_png"] = plot_confusion_flow(result, out_dir / "confusion_flow.png")
    return paths
