"""The result of an evaluation (schema ``rfbench.result/1``) and its CSV and markdown renderings.

Built from the flag file only (:func:`build_result`), so every table can be
recomputed without attacking again.  Keys:

* ``schema``, ``dataset``, ``classes``, ``n_per_class`` (evaluated samples per class), ``threat``;
* ``attacks``: full settings of each attack, in run order, with ``scope``
  (``all``, or ``survivors`` of the attacks listed in ``after``) and any ``flags``;
* ``names``: ``clean``, the attack labels, ``worst_case`` (the keys of the next maps);
* ``per_class``: name -> C accuracies (fractions); ``per_class_ci95``: name -> C [lo, hi];
* ``summary``: name -> ``{mean, worst, worst_class, best, best_class, gap, std, nsd, tail20, worst_ci95}``;
* ``boundary_error`` (clean − worst case, per class), ``confusion`` (name -> C×C counts
  [true, predicted]), ``cfps`` (name -> C), ``weight_norm``, ``groups`` (long-tailed sets),
  ``t_sweep`` (when Temperature-PGD ran at several T), ``checks``, ``provenance``, ``flags_file``;
* RobustBench-compatible fields: ``clean_acc``, ``autoattack_acc`` (percentages, RobustBench's
  scale; every other accuracy here is a fraction), ``eps`` ("8/255"), ``threat_model``,
  ``architecture``, ``additional_data``.

The worst case is taken over the attacks at the evaluation's threat (eps
and norm); attacks at another eps are reported but not part of it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rfbench.attacks.named import format_eps
from rfbench.attacks.spec import Threat
from rfbench.benchmark.eval import checks as checks_mod
from rfbench.benchmark.eval import metrics as M
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.io.atomic import atomic_write_json, atomic_write_text

SCHEMA = "rfbench.result/1"
REQUIRED_KEYS = ("schema", "classes", "n_per_class", "threat", "attacks", "per_class", "summary", "confusion",
                 "checks", "provenance", "clean_acc", "eps", "flags_file")
SUMMARY_KEYS = ("mean", "worst", "worst_class", "gap", "std", "tail20")


def at_threat(settings: dict[str, dict], threat: Threat) -> list[str]:
    """Attack labels whose eps and norm are the evaluation's threat (the worst case is over these)."""
    return [lab for lab, s in settings.items()
            if s.get("norm") == threat.norm and math.isclose(float(s["eps"]), threat.eps, rel_tol=1e-9)]


def attack_predictions(flags: SampleFlags, labels: list[str]) -> dict[str, np.ndarray]:
    """Per attack, the adversarial prediction of every sample; where a cascade attack did not run
    (the point was already broken), the prediction that broke it."""
    out = {}
    for i, lab in enumerate(labels):
        a = flags.labels.index(lab)
        ran = flags.ran[:, a]
        out[lab] = flags.adv_pred[:, a] if ran.all() else np.where(ran, flags.adv_pred[:, a], flags.worst_case_pred(labels[:i]))
    return out


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


def build_result(
    flags: SampleFlags,
    *,
    classes: list[str],
    settings: dict[str, dict],
    threat: Threat,
    dataset: str,
    train_counts: list[int] | None = None,
    imbalance_ratio: float | None = None,
    weight_norms: np.ndarray | None = None,
    provenance: dict | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_per_class_requested: int | None = None,
    flags_file: str = "flags.npz",
    source: dict | None = None,
) -> dict[str, Any]:
    """The ``rfbench.result/1`` dictionary from a (finished) flag file and the evaluation's context."""
    if not flags.done.all():
        raise ValueError("build_result needs a finished flag file")
    C, y = len(classes), flags.y
    labels = list(flags.labels)
    worst_over = at_threat(settings, threat)
    robust = {lab: flags.robust(lab) for lab in labels}
    correct = {"clean": flags.clean_correct, **robust, "worst_case": flags.worst_case(worst_over)}
    preds = {"clean": flags.clean_pred, **attack_predictions(flags, labels), "worst_case": flags.worst_case_pred(worst_over)}
    per_class, ci, summary = {}, {}, {}
    for i, (name, ok) in enumerate(correct.items()):
        acc = M.per_class_accuracy(ok, y, C)
        pc_ci, worst_ci = M.bootstrap_ci(ok, y, C, n_boot=n_boot, seed=seed + i)
        per_class[name], ci[name] = acc, pc_ci
        summary[name] = {**M.summarize(acc), "worst_ci95": worst_ci.tolist()}
    groups = M.class_groups(train_counts, imbalance_ratio)
    max_pert = {lab: float(np.nanmax(flags.pert[:, flags.labels.index(lab)])) if flags.ran[:, flags.labels.index(lab)].any() else None
                for lab in labels}
    aa = [lab for lab in labels if settings[lab]["name"] == "autoattack" and lab in worst_over]
    n = len(y)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "dataset": dataset,
        "classes": list(classes),
        "n_per_class": np.bincount(y, minlength=C).tolist(),
        "n_per_class_requested": n_per_class_requested,
        "n_samples": n,
        "threat": threat.to_dict(),
        "attacks": [settings[lab] for lab in labels],
        "worst_case_over": worst_over,
        "names": list(correct),
        "per_class": {k: v.tolist() for k, v in per_class.items()},
        "per_class_ci95": {k: v.tolist() for k, v in ci.items()},
        "summary": summary,
        "boundary_error": M.boundary_error(per_class["clean"], per_class["worst_case"]).tolist(),
        "confusion": {k: M.confusion_matrix(y, p, C).tolist() for k, p in preds.items()},
        "cfps": {k: M.class_false_positive_score(y, p, C).tolist() for k, p in preds.items()},
        "weight_norm": None,
        "groups": None,
        "t_sweep": t_sweep_summary(per_class, settings, robust, y, classes),
        "checks": checks_mod.run_checks(robust, flags.clean_correct, y, C, settings, max_pert),
        "flags_file": flags_file,
        "provenance": provenance or {},
        # RobustBench-compatible fields (percent, as RobustBench writes them)
        "clean_acc": round(100 * float(flags.clean_correct.mean()), 2),
        "autoattack_acc": round(100 * float(robust[aa[0]].mean()), 2) if aa else None,
        "autoattack_scope": settings[aa[0]]["scope"] if aa else None,
        "eps": format_eps(threat.eps),
        "threat_model": {"linf": "Linf", "l2": "L2"}[threat.norm],
        "architecture": (source or {}).get("architecture"),
        "additional_data": (source or {}).get("additional_data"),
    }
    if weight_norms is not None and len(weight_norms) == C:
        result["weight_norm"] = {
            "per_class": [float(w) for w in weight_norms],
            "pearson_with_clean": M.pearson(weight_norms, per_class["clean"]),
            "pearson_with_worst_case": M.pearson(weight_norms, per_class["worst_case"]),
        }
    if groups:
        result["groups"] = {"members": groups, **{k: M.group_means(v, groups) for k, v in per_class.items()}}
    return result


def validate_result(result: dict) -> None:
    """Raise ``ValueError`` naming the first problem if ``result`` does not follow ``rfbench.result/1``."""
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"result misses keys: {', '.join(missing)}")
    if result["schema"] != SCHEMA:
        raise ValueError(f"schema is {result['schema']!r}, expected {SCHEMA!r}")
    C = len(result["classes"])
    names = ["clean", *[a["label"] for a in result["attacks"]], "worst_case"]
    for name in names:
        pc = result["per_class"].get(name)
        if pc is None or len(pc) != C:
            raise ValueError(f"per_class[{name!r}] must list {C} accuracies")
        if any(v is not None and not (0 <= v <= 1) for v in pc):
            raise ValueError(f"per_class[{name!r}] holds a value outside [0,1]")
        missing = [k for k in SUMMARY_KEYS if k not in result["summary"].get(name, {})]
        if missing:
            raise ValueError(f"summary[{name!r}] misses {', '.join(missing)}")
        conf = result["confusion"].get(name)
        if conf is None or len(conf) != C or any(len(r) != C for r in conf):
            raise ValueError(f"confusion[{name!r}] must be {C}x{C}")
    if len(result["n_per_class"]) != C:
        raise ValueError("n_per_class must list one count per class")
    for key in ("eps", "norm", "steps", "alpha"):
        if key not in result["threat"]:
            raise ValueError(f"threat misses {key!r}")


# -- renderings ---------------------------------------------------------------
def per_class_frame(result: dict) -> pd.DataFrame:
    """Per-class accuracies (fractions) by class, one column per name, plus boundary error and weight norm."""
    df = pd.DataFrame({name: result["per_class"][name] for name in result["names"]})
    df.insert(0, "n", result["n_per_class"])
    df.insert(0, "class", result["classes"])
    df["boundary_error"] = result["boundary_error"]
    df["cfps_worst_case"] = result["cfps"]["worst_case"]
    if result.get("weight_norm"):
        df["weight_norm"] = result["weight_norm"]["per_class"]
    return df


def markdown_table(result: dict) -> str:
    """The per-class table in percent, with mean / worst / gap / std / tail20 rows (for the terminal)."""
    names = result["names"]
    df = pd.DataFrame({name: [100 * v for v in result["per_class"][name]] for name in names}, index=result["classes"])
    df.index.name = "class"
    for key in SUMMARY_KEYS:
        if key == "worst_class":
            continue
        df.loc[key] = [100 * result["summary"][n][key] for n in names]
    table = df.to_markdown(floatfmt=".1f")
    worst = result["summary"]["worst_case"]
    lo, hi = worst["worst_ci95"]
    foot = (f"\nworst case over {', '.join(result['worst_case_over']) or '(no attack)'}; worst class "
            f"{result['classes'][worst['worst_class']]} at {100 * worst['worst']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}); "
            f"eps {result['eps']} ({result['threat']['norm']}); checks: {result['checks']['overall']}")
    ts = result.get("t_sweep")
    if ts:
        foot += f"\nT-PGD sweep: strongest T = {ts['strongest_T']:g} ({ts['strongest_label']})"
        vs = ts.get("vs_pgd")
        if vs:
            drops = ", ".join(f"{d['name']} {100 * d['delta']:+.1f}" for d in vs["largest_drops"]) or "none"
            foot += (f"; vs {vs['pgd']}: mean {100 * vs['mean_delta']:+.1f} points, worst class {100 * vs['worst_delta']:+.1f}; "
                     f"largest drops: {drops}")
    return table + foot


def write_outputs(result: dict, out_dir: str | Path, *, plot: bool = False) -> dict[str, Path]:
    """Write ``result.json``, ``per_class.csv``, ``per_class.md`` (and the plots); return their paths."""
    out_dir = Path(out_dir)
    validate_result(result)
    paths = {"json": out_dir / "result.json", "csv": out_dir / "per_class.csv", "md": out_dir / "per_class.md"}
    atomic_write_json(paths["json"], result)
    atomic_write_text(paths["csv"], per_class_frame(result).to_csv(index_label="class_index"))
    atomic_write_text(paths["md"], markdown_table(result) + "\n")
    if plot:
        from rfbench.benchmark.eval.plots import plot_confusion_flow, plot_per_class

        paths["per_class_png"] = plot_per_class(result, out_dir / "per_class.png")
        paths["confusion_png"] = plot_confusion_flow(result, out_dir / "confusion_flow.png")
    return paths
