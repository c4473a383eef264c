"""Side-by-side tables of several results, and per-class differences (``rfbench report``).

Tables are pandas frames of fractions; :func:`render` turns them into
markdown (percent, via tabulate), CSV or JSON.

* :func:`summary_frame`: one row per (result, name) with mean / worst / gap / std / nsd / tail20;
* :func:`per_class_frame`: classes × (result / name);
* :func:`diff_attacks`: per class, attack B − attack A within one result, sorted from A's weakest class;
* :func:`diff_models`: per class, model − baseline for every name both have, with DAFA's ρ.

The seed paper's finding (stronger attacks gain mainly on the vulnerable
classes) shows as a negative correlation between the baseline accuracy and
the difference in :func:`diff_attacks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rfbench.benchmark.errors import RfbenchError
from rfbench.benchmark.eval import metrics as M
from rfbench.benchmark.eval.result import validate_result
from rfbench.benchmark.io.atomic import read_json


def load_results(paths: list[str | Path]) -> list[tuple[str, dict]]:
    """``(display name, result)`` for each file; names are unique (the model name, else the directory)."""
    out = []
    for p in paths:
        res = read_json(p)
        try:
            validate_result(res)
        except ValueError as exc:
            raise RfbenchError(f"{p} is not an rfbench result: {exc}") from None
        name = (res.get("provenance", {}).get("model") or {}).get("name") or Path(p).resolve().parent.name
        out.append((name, res))
    names = [n for n, _ in out]
    return [(n if names.count(n) == 1 else f"{n}#{i + 1}", r) for i, (n, r) in enumerate(out)]


def _names(res: dict, only: list[str] | None) -> list[str]:
    return [n for n in res["names"] if not only or n in only]


def summary_frame(results: list[tuple[str, dict]], only: list[str] | None = None) -> pd.DataFrame:
    """One row per result and name: mean, worst, worst class, gap, std, nsd, tail20 (fractions)."""
    rows = []
    for model, res in results:
        for name in _names(res, only):
            s = res["summary"][name]
            rows.append({"model": model, "name": name, "mean": s["mean"], "worst": s["worst"],
                         "worst_class": res["classes"][s["worst_class"]], "gap": s["gap"], "std": s["std"],
                         "nsd": s.get("nsd"), "tail20": s["tail20"]})
    return pd.DataFrame(rows)


def per_class_frame(results: list[tuple[str, dict]], only: list[str] | None = None) -> pd.DataFrame:
    """Classes as rows, one column per ``model/name`` (model omitted when there is a single result)."""
    classes = results[0][1]["classes"]
    cols = {}
    for model, res in results:
        if res["classes"] != classes:
            raise RfbenchError(f"{model} has other classes than {results[0][0]}; cannot put them side by side")
        for name in _names(res, only):
            cols[name if len(results) == 1 else f"{model}/{name}"] = res["per_class"][name]
    return pd.DataFrame(cols, index=pd.Index(classes, name="class"))


def diff_attacks(res: dict, a: str, b: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per class: accuracy under ``a``, under ``b``, and ``b − a``, sorted from the weakest class under ``a``."""
    for n in (a, b):
        if n not in res["per_class"]:
            raise RfbenchError(f"no '{n}' in this result; names: {', '.join(res['names'])}")
    acc_a, acc_b = np.array(res["per_class"][a], float), np.array(res["per_class"][b], float)
    df = pd.DataFrame({a: acc_a, b: acc_b, f"{b} - {a}": acc_b - acc_a}, index=pd.Index(res["classes"], name="class"))
    stats = {"mean_diff": float(np.nanmean(acc_b - acc_a)), "pearson(acc_a, diff)": M.pearson(acc_a, acc_b - acc_a)}
    return df.sort_values(a, kind="stable"), stats


def diff_models(base: tuple[str, dict], other: tuple[str, dict], only: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """Per class ``other − base`` for every common name, sorted from the baseline's weakest worst-case class; DAFA's ρ."""
    (bn, b), (on, o) = base, other
    if b["classes"] != o["classes"]:
        raise RfbenchError(f"{bn} and {on} have different classes")
    names = [n for n in _names(b, only) if n in o["per_class"]]
    cols = {f"{bn}/{n}": b["per_class"][n] for n in ("clean", "worst_case") if n in names}
    cols.update({f"{n} diff": np.array(o["per_class"][n], float) - np.array(b["per_class"][n], float) for n in names})
    df = pd.DataFrame(cols, index=pd.Index(b["classes"], name="class"))
    if "worst_case" in names:
        df = df.sort_values(f"{bn}/worst_case", kind="stable")
    rho = {n: M.dafa_rho(o["summary"][n]["mean"], o["summary"][n]["worst"], b["summary"][n]["mean"], b["summary"][n]["worst"])
           for n in names if b["summary"][n]["worst"] > 0 and b["summary"][n]["mean"] > 0}
    return df, {"baseline": bn, "model": on, "dafa_rho": rho}


def render(tables: dict[str, pd.DataFrame], notes: dict[str, Any], fmt: str) -> str:
    """Markdown (accuracies in percent), CSV (fractions), or JSON (fractions) text of ``tables`` and ``notes``."""
    if fmt == "json":
        import json

        payload = {k: v.reset_index().to_dict(orient="records") if v.index.name else v.to_dict(orient="records")
                   for k, v in tables.items()}
        return json.dumps({**payload, **({"notes": notes} if notes else {})}, indent=2, default=float)
    parts = []
    for title, df in tables.items():
        if fmt == "csv":
            parts.append(f"# {title}\n" + df.to_csv(index=bool(df.index.name)))
        else:
            shown = df.copy()
            for c in shown.columns:
                if c not in ("model", "name", "worst_class", "nsd") and pd.api.types.is_numeric_dtype(shown[c]):
                    shown[c] = 100 * shown[c]
            fmts = ([".1f"] if df.index.name else []) + [".3f" if c == "nsd" else ".1f" for c in shown.columns]
            parts.append(f"### {title} (%)\n\n" + shown.to_markdown(floatfmt=fmts, index=bool(df.index.name)))
    if notes:
        text = "; ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in notes.items())
        parts.append(("# " if fmt == "csv" else "") + text)
    return "\n\n".join(parts) + "\n"
