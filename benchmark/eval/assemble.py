"""Assembling a result (schema ``rfbench.result/2``) from a finished flag file and the evaluation's context.

Built from the flag file only, so every table can be recomputed without attacking again; the
harness adds its model and prediction checks and wraps the dictionary in the validated
:class:`~rfbench.benchmark.eval.result.EvalResult`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from rfbench.benchmark.eval import metrics
from rfbench.benchmark.eval.checks import run_checks
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.eval.result import SCHEMA
from rfbench.benchmark.eval.robustbench_view import robustbench_block
from rfbench.benchmark.eval.tsweep import t_sweep_summary
from rfbench.core.perclass import class_counts
from rfbench.core.threat import Threat


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


def _json_list(a: np.ndarray) -> list:
    """``a.tolist()`` with NaN (an empty class) as ``None``, JSON's null."""
    return np.where(np.isnan(a), None, a).tolist() if np.isnan(a).any() else a.tolist()


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
        acc = metrics.per_class_accuracy(ok, y, C)
        per_class[name], ci[name] = acc, metrics.per_class_intervals(ok, y, C)
        summary[name] = {**metrics.summarize(acc), "worst_ci95": list(metrics.worst_class_interval(ok, y, C))}
    groups = metrics.class_groups(train_counts, imbalance_ratio)
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
        "boundary_error": _json_list(metrics.boundary_error(per_class["clean"], per_class["worst_case"])),
        "confusion": {k: metrics.confusion_matrix(y, p, C).tolist() for k, p in preds.items()},
        "cfps": {k: metrics.class_false_positive_score(y, p, C).tolist() for k, p in preds.items()},
        "weight_norm": None,
        "groups": None,
        "t_sweep": t_sweep_summary(per_class, settings, robust, y, classes),
        "checks": run_checks(robust, flags.clean_correct, y, C, settings, max_pert),
        "flags_file": flags_file,
        "provenance": provenance or {},
        "robustbench": robustbench_block(flags, settings, threat, robust, worst_over, source),
        "inventions": inventions_used(settings, source),
    }
    if weight_norms is not None and len(weight_norms) == C:
        result["weight_norm"] = {
            "per_class": [float(w) for w in weight_norms],
            "pearson_with_clean": metrics.pearson(weight_norms, per_class["clean"]),
            "pearson_with_worst_case": metrics.pearson(weight_norms, per_class["worst_case"]),
        }
    if groups:
        result["groups"] = {"members": groups, **{k: metrics.group_means(v, groups) for k, v in per_class.items()}}
    return result
