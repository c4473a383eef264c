"""Side-by-side tables of several results, and per-class differences (``rfbench report``).

Tables are pandas frames of fractions; :func:`render` turns them into
markdown (percent, via tabulate), CSV or JSON.

* :func:`summary_frame`: one row per (result, name) with mean / worst / gap / std / nsd / tail20;
* :func:`per_class_frame`: classes × (result / name);
* :func:`diff_attacks`: per class, attack B − attack A within one result, sorted from A's weakest class;
* :func:`diff_models`: per class, model − baseline for every name both have, with DAFA's ρ;
  :func:`sample_set_difference` says whether two results were evaluated on different samples.

Results are labelled by :func:`default_label` (short: the model's name without a
directory, else the result's folder) unless labels are given.  Cascade attack
columns are titled ``LABEL (AA on survivors)``.

The seed paper's finding (stronger attacks gain mainly on the vulnerable
classes) shows as a negative correlation between the baseline accuracy and
the difference in :func:`diff_attacks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rfbench.benchmark.eval import metrics
from rfbench.benchmark.eval.group import check_group
from rfbench.benchmark.eval.render import column_title
from rfbench.benchmark.eval.result import validate_result
from rfbench.benchmark.eval.result_checks import check_classes, check_result_values
from rfbench.core.errors import RfbenchError
from rfbench.core.io.atomic import read_json
from rfbench.core.perclass import pct

LABEL_MAX = 32  # characters of a default label


def default_label(path: str | Path, res: dict) -> str:
    """A short label: the model's name with any directory dropped (``/a/b/nets.py:build`` -> ``nets.py:build``),
    or, when that is missing or longer than :data:`LABEL_MAX`, the result's folder name."""
    name = str((res.get("provenance", {}).get("model") or {}).get("name") or "")
    file, sep, rest = name.rpartition(":")
    if "/" in name or "\\" in name:
        name = f"{Path(file).name}{sep}{rest}" if sep and ("/" in file or "\\" in file) else Path(name).name
    folder = Path(path).resolve().parent.name
    return name if name and len(name) <= LABEL_MAX else (folder[:LABEL_MAX] or name[:LABEL_MAX])


def load_results(paths: list[str | Path], labels: list[str] | None = None) -> list[tuple[str, dict]]:
    """``(label, result)`` for each file: ``labels`` when given (one per file), else :func:`default_label`
    (made unique with ``#1``, ``#2``...)."""
    if labels and len(labels) != len(paths):
        raise RfbenchError(f"--label given {len(labels)} times for {len(paths)} results; give one per result, in order")
    out = []
    for p in paths:
        res = read_json(p)
        try:
            check_classes(res)
            validate_result(res)
            check_result_values(res)
            check_group(Path(p), res)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RfbenchError(f"{p} is not an rfbench result: {'missing key ' if isinstance(exc, KeyError) else ''}"
                               f"{exc}") from None
        out.append((default_label(p, res), res))
    if labels:
        if len(set(labels)) != len(labels):
            raise RfbenchError(f"--label values must differ, got {', '.join(labels)}")
        return [(lab, r) for lab, (_, r) in zip(labels, out)]
    names = [n for n, _ in out]
    return [(n if names.count(n) == 1 else f"{n}#{i + 1}", r) for i, (n, r) in enumerate(out)]


def sample_set_difference(a: dict, b: dict) -> list[str] | None:
    """What differs between the evaluated samples of two results ([] = the same set), or None if it cannot be told.

    Compares the dataset, the per-class counts and, where both results carry them,
    the hashes of the sample positions, labels and images (``result["samples"]``).
    """
    diffs = []
    if a.get("dataset") != b.get("dataset"):
        diffs.append(f"dataset {a.get('dataset')} vs {b.get('dataset')}")
    if a.get("n_per_class") != b.get("n_per_class"):
        diffs.append("samples per class differ")
    sa, sb = a.get("samples") or {}, b.get("samples") or {}
    keys = [k for k in ("index_sha256", "labels_sha256", "images_sha256") if k in sa and k in sb]
    diffs += [f"{k.removesuffix('_sha256')} hash differs" for k in keys if sa[k] != sb[k]]
    if diffs:
        return diffs
    return [] if keys else None


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
            title = column_title(res, name)
            cols[title if len(results) == 1 else f"{model}/{title}"] = res["per_class"][name]
    return pd.DataFrame(cols, index=pd.Index(classes, name="class"))


def diff_attacks(res: dict, a: str, b: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per class: accuracy under ``a``, under ``b``, and ``b − a``, sorted from the weakest class under ``a``."""
    for n in (a, b):
        if n not in res["per_class"]:
            raise RfbenchError(f"no '{n}' in this result; names: {', '.join(res['names'])}")
    acc_a, acc_b = np.array(res["per_class"][a], float), np.array(res["per_class"][b], float)
    df = pd.DataFrame({a: acc_a, b: acc_b, f"{b} - {a}": acc_b - acc_a}, index=pd.Index(res["classes"], name="class"))
    stats = {"mean_diff": float(np.nanmean(acc_b - acc_a)), "pearson(acc_a, diff)": metrics.pearson(acc_a, acc_b - acc_a)}
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
    rho = {n: metrics.dafa_rho(o["summary"][n]["mean"], o["summary"][n]["worst"], b["summary"][n]["mean"], b["summary"][n]["worst"])
           for n in names if b["summary"][n]["worst"] > 0 and b["summary"][n]["mean"] > 0}  # ρ divides by both
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
                if c == "nsd":
                    shown[c] = [("-" if v is None or v != v else f"{v:.3f}") for v in shown[c]]
                elif c not in ("model", "name", "worst_class") and pd.api.types.is_numeric_dtype(shown[c]):
                    shown[c] = [pct(v) for v in shown[c]]
            parts.append(f"### {title} (%)\n\n" + shown.to_markdown(index=bool(df.index.name), stralign="right"))
    if notes:
        text = "; ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in notes.items())
        parts.append(("# " if fmt == "csv" else "") + text)
    return "\n\n".join(parts) + "\n"
