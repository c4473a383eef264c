"""The result of an evaluation (schema ``rfbench.result/2``) and its CSV and markdown renderings.

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
* ``robustbench``: the RobustBench-style block, kept apart from rfbench's own numbers
  (:func:`robustbench_block`): ``convention``, ``clean_acc``, ``autoattack_acc`` (fractions, like
  every accuracy in the file), ``autoattack_version``, ``autoattack_scope``, ``autoattack_package``,
  ``eps`` ("8/255"), ``threat_model``, ``architecture``, ``additional_data``;
* ``inventions``: rfbench's own methods (not from a paper) that this result used, with their labels.

Definitions (one home: :mod:`rfbench.core.perclass`): robust to an attack
= clean-correct and correct on the adversarial input; the worst case is robust
to every attack of ``worst_case_over`` (the attacks at the evaluation's threat:
eps and norm; attacks at another eps are reported but not part of it); an
empty class is NaN (``null`` in the JSON); ``per_class_ci95`` are Wilson score
intervals, ``worst_ci95`` the Bonferroni-adjusted interval of the worst class.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rfbench.attacks.spec import Threat
from rfbench.benchmark.eval import checks as checks_mod
from rfbench.benchmark.eval import metrics as M
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.eval.summary_line import summary_line
from rfbench.core.io.atomic import atomic_write_json, atomic_write_text
from rfbench.core.perclass import class_counts, pct
from rfbench.core.threat import NORM_NAMES, format_eps

SCHEMA = "rfbench.result/2"
REQUIRED_KEYS = ("schema", "classes", "n_per_class", "threat", "attacks", "per_class", "summary", "confusion",
                 "checks", "provenance", "robustbench", "flags_file")
RB_CONVENTION = ("RobustBench-style fields (Croce et al., NeurIPS 2021 Datasets and Benchmarks), as fractions: "
                 "clean_acc = clean accuracy over all evaluated images (not class-balanced); autoattack_acc = fraction "
                 "clean-correct and robust to standard AutoAttack (only a version=standard run fills it; with "
                 "scope 'survivors' it ran on the points robust to the attacks before it, so it is also robust to those)")
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


def _json_list(a: np.ndarray) -> list:
    """``a.tolist()`` with NaN (an empty class) as ``None``, JSON's null."""
    return np.where(np.isnan(a), None, a).tolist() if np.isnan(a).any() else a.tolist()


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


def inventions_used(settings: dict[str, dict], source: dict | None) -> list[dict[str, str]]:
    """rfbench's own methods (not from a paper) behind this result, each ``{label, invention}``: those of the
    attacks, of the evaluated run's defense, and calibration (see ``rfbench list``)."""
    from rfbench.attacks.registry import ATTACKS
    from rfbench.core.registry import INVENTION_LABEL

    out = [{"label": lab, "invention": note} for lab, s in settings.items() if s["name"] in ATTACKS
           for note in ATTACKS.invention_notes(s["name"], s)]
    source = source or {}
    defense = source.get("defense")
    if defense:
        from rfbench.defenses import DEFENSES

        if defense in DEFENSES:
            args = (source.get("train_config") or {}).get("defense_args") or {}
            cls = DEFENSES.get(defense)
            defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)} if dataclasses.is_dataclass(
                getattr(cls, "Config", None)) else {}
            out += [{"label": f"defense {defense}", "invention": note}
                    for note in DEFENSES.invention_notes(defense, {**defaults, **args})]
    if source.get("calibration"):
        from rfbench.benchmark.eval.calibrate import CALIBRATION_NOTE

        out.append({"label": "calibration", "invention": f"{INVENTION_LABEL}: {CALIBRATION_NOTE}"})
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
    n_per_class_requested: int | None = None,
    flags_file: str = "flags.npz",
    source: dict | None = None,
) -> dict[str, Any]:
    """The ``rfbench.result/2`` dictionary from a (finished) flag file and the evaluation's context."""
    if not flags.done.all():
        raise ValueError("build_result needs a finished flag file")
    C, y = len(classes), flags.y
    labels = list(flags.labels)
    worst_over = at_threat(settings, threat)
    robust = {lab: flags.robust(lab) for lab in labels}
    correct = {"clean": flags.clean_correct, **robust, "worst_case": flags.worst_case(worst_over)}
    preds = {"clean": flags.clean_pred, **attack_predictions(flags, labels), "worst_case": flags.worst_case_pred(worst_over)}
    per_class, ci, summary = {}, {}, {}
    for name, ok in correct.items():
        acc = M.per_class_accuracy(ok, y, C)
        per_class[name], ci[name] = acc, M.per_class_intervals(ok, y, C)
        summary[name] = {**M.summarize(acc), "worst_ci95": list(M.worst_class_interval(ok, y, C))}
    groups = M.class_groups(train_counts, imbalance_ratio)
    max_pert = {lab: float(np.nanmax(flags.pert[:, flags.labels.index(lab)])) if flags.ran[:, flags.labels.index(lab)].any() else None
                for lab in labels}
    n = len(y)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "dataset": dataset,
        "classes": list(classes),
        "n_per_class": class_counts(y, C).tolist(),
        "n_per_class_requested": n_per_class_requested,
        "n_samples": n,
        "threat": threat.to_dict(),
        "attacks": [settings[lab] for lab in labels],
        "worst_case_over": worst_over,
        "names": list(correct),
        "per_class": {k: _json_list(v) for k, v in per_class.items()},
        "per_class_ci95": {k: _json_list(v) for k, v in ci.items()},
        "summary": summary,
        "boundary_error": _json_list(M.boundary_error(per_class["clean"], per_class["worst_case"])),
        "confusion": {k: M.confusion_matrix(y, p, C).tolist() for k, p in preds.items()},
        "cfps": {k: M.class_false_positive_score(y, p, C).tolist() for k, p in preds.items()},
        "weight_norm": None,
        "groups": None,
        "t_sweep": t_sweep_summary(per_class, settings, robust, y, classes),
        "checks": checks_mod.run_checks(robust, flags.clean_correct, y, C, settings, max_pert),
        "flags_file": flags_file,
        "provenance": provenance or {},
        "robustbench": robustbench_block(flags, settings, threat, robust, worst_over, source),
        "inventions": inventions_used(settings, source),
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
    """Raise ``ValueError`` naming the first problem if ``result`` does not follow ``rfbench.result/2``."""
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"result misses keys: {', '.join(missing)}")
    if result["schema"] != SCHEMA:
        raise ValueError(f"schema is {result['schema']!r}, expected {SCHEMA!r}")
    C = len(result["classes"])
    names = ["clean", *[a["label"] for a in result["attacks"]], "worst_case"]
    listed = result.get("names", names)
    if not isinstance(listed, list):
        raise ValueError("names must be a list")
    absent = [n for n in listed if n not in names]
    if absent:
        raise ValueError(f"names {', '.join(map(repr, absent))} are not clean, an attack's label or worst_case")
    for name in names:
        if not isinstance(result["summary"].get(name), dict):
            raise ValueError(f"summary misses {name!r}")
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


CASCADE_NOTE = "AA on survivors"


def column_title(result: dict, name: str) -> str:
    """A table header: the name, plus ``(AA on survivors)`` for a cascade attack that ran on the survivors only."""
    s = next((a for a in result.get("attacks", []) if a.get("label") == name), None)
    return f"{name} ({CASCADE_NOTE})" if s and s.get("scope") == "survivors" else name


def markdown_table(result: dict) -> str:
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
