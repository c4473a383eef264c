"""Sanity checks run on every evaluation (``docs/evaluation.md``, `checks` of `result.json`).

Each check returns ``{"verdict": "pass" | "fail" | "warn" | "skipped", "detail": str, ...}``.

"Beyond noise" is a paired test per class: for a pair (A should be at most
as accurate as B), let ``b`` = samples A leaves correct but B breaks, ``c``
= the reverse.  A violation is a class with ``b > c`` and McNemar's
``z = (b − c)/√(b + c) > 2``.  Smaller inversions are listed as ``minor``.

:func:`check_predictions` (run by the harness on the clean predictions) fails a
model that predicts a single class, or whose clean accuracy is within noise of
chance, and warns when one class takes most predictions: such a model has
"robust accuracy" that measures nothing (a constant classifier is never fooled
on its one class).  This check is ours.

The in-ball check is not here: the harness raises as soon as an attack
returns a point outside the eps-ball or [0,1].
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from rfbench.core.perclass import class_counts, pct

Z_NOISE = 2.0

# (stronger attack name, weaker attack name): the stronger must not be weaker, per class, beyond noise
ORDER_RULES: tuple[tuple[str, str], ...] = (("pgd", "fgsm"), ("autoattack", "pgd"))


def paired_inversions(strong: np.ndarray, weak: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[list[dict], list[dict]]:
    """Per class: (violations beyond noise, minor inversions) where ``strong`` keeps more samples correct than ``weak``."""
    bad, minor = [], []
    for k in range(num_classes):
        m = y == k
        b = int((strong[m] & ~weak[m]).sum())
        c = int((weak[m] & ~strong[m]).sum())
        if b <= c:
            continue
        z = (b - c) / math.sqrt(b + c)
        n = int(m.sum())
        entry = {"class": k, "excess": (b - c) / n, "z": round(z, 2)}
        (bad if z > Z_NOISE else minor).append(entry)
    return bad, minor


def _verdict(violations: list, minor: list, detail: str) -> dict[str, Any]:
    return {"verdict": "fail" if violations else "pass", "detail": detail, "violations": violations, "minor": minor}


def check_robust_le_clean(robust: dict[str, np.ndarray], clean: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """Robust accuracy ≤ clean accuracy in every class, for every attack.

    Robust implies clean-correct by definition (:func:`rfbench.core.perclass.robust`), so any
    inversion here means the flags were built without that definition."""
    viol, minor = [], []
    for lab, r in robust.items():
        b, m = paired_inversions(r, clean, y, num_classes)
        viol += [{"attack": lab, **v} for v in b]
        minor += [{"attack": lab, **v} for v in m]
    return _verdict(viol, minor, "robust accuracy <= clean accuracy per class")


def check_attack_order(
    robust: dict[str, np.ndarray], settings: dict[str, dict], y: np.ndarray, num_classes: int
) -> dict:
    """PGD ≤ FGSM and AutoAttack ≤ PGD per class (same eps and norm), beyond noise; violations mean masking or a bug."""
    viol, minor, pairs = [], [], []
    for strong_name, weak_name in ORDER_RULES:
        for s_lab, s in settings.items():
            if s["name"] != strong_name or s.get("scope") == "survivors":
                continue
            for w_lab, w in settings.items():
                if w["name"] != weak_name or w.get("scope") == "survivors" or not _same_threat(s, w):
                    continue
                pairs.append(f"{s_lab} <= {w_lab}")
                b, m = paired_inversions(robust[s_lab], robust[w_lab], y, num_classes)
                viol += [{"stronger": s_lab, "weaker": w_lab, **v} for v in b]
                minor += [{"stronger": s_lab, "weaker": w_lab, **v} for v in m]
    if not pairs:
        return {"verdict": "skipped", "detail": "no attack pair to compare (need pgd+fgsm, or autoattack run on all points + pgd)"}
    return {**_verdict(viol, minor, "stronger attack not weaker per class"), "pairs": pairs}


def check_eps_monotone(robust: dict[str, np.ndarray], settings: dict[str, dict], y: np.ndarray, num_classes: int) -> dict:
    """Accuracy does not increase with eps, for attacks equal in everything but eps (and the alpha that follows it)."""
    groups: dict[str, list[tuple[float, str]]] = {}
    for lab, s in settings.items():
        key = repr(sorted((k, repr(v)) for k, v in s.items() if k not in ("eps", "alpha", "label", "effective", "flags")))
        groups.setdefault(key, []).append((float(s["eps"]), lab))
    viol, minor, chains = [], [], []
    for members in groups.values():
        if len({e for e, _ in members}) < 2:
            continue
        members.sort()
        chains.append(" < ".join(lab for _, lab in members))
        for (_, small), (_, large) in zip(members, members[1:]):
            b, m = paired_inversions(robust[large], robust[small], y, num_classes)
            viol += [{"larger_eps": large, "smaller_eps": small, **v} for v in b]
            minor += [{"larger_eps": large, "smaller_eps": small, **v} for v in m]
    if not chains:
        return {"verdict": "skipped", "detail": "only one eps per attack"}
    return {**_verdict(viol, minor, "accuracy non-increasing in eps"), "chains": chains}


def check_autoattack_flags(settings: dict[str, dict]) -> dict:
    """pyautoattack's own checks (randomness, softmax output, dynamic model, zero gradients...) as warnings."""
    aa = {lab: s.get("flags", {}) for lab, s in settings.items() if s["name"] == "autoattack"}
    if not aa:
        return {"verdict": "skipped", "detail": "autoattack not run"}
    flagged = {lab: f for lab, f in aa.items() if f}
    return {"verdict": "warn" if flagged else "pass", "detail": "pyautoattack gradient-masking checks", "flags": flagged}


def check_in_ball(settings: dict[str, dict], max_pert: dict[str, float]) -> dict:
    """Every x_adv within the eps-ball and [0,1] (enforced during the run; the largest perturbations are recorded)."""
    return {"verdict": "pass", "detail": "every x_adv inside its eps-ball and [0,1] (asserted per batch)",
            "max_perturbation": {lab: {"max": max_pert.get(lab), "eps": settings[lab]["eps"]} for lab in settings}}


CHECKS: dict[str, Callable[..., dict]] = {
    "robust_le_clean": lambda ctx: check_robust_le_clean(ctx["robust"], ctx["clean"], ctx["y"], ctx["C"]),
    "attack_order": lambda ctx: check_attack_order(ctx["robust"], ctx["settings"], ctx["y"], ctx["C"]),
    "eps_monotone": lambda ctx: check_eps_monotone(ctx["robust"], ctx["settings"], ctx["y"], ctx["C"]),
    "in_ball": lambda ctx: check_in_ball(ctx["settings"], ctx["max_pert"]),
    "autoattack_flags": lambda ctx: check_autoattack_flags(ctx["settings"]),
}


def run_checks(robust, clean, y, num_classes, settings, max_pert) -> dict[str, Any]:
    """Every registered check, plus ``overall``: ``fail`` if any failed, ``warn`` if any warned, else ``pass``."""
    ctx = {"robust": robust, "clean": clean, "y": y, "C": num_classes, "settings": settings, "max_pert": max_pert}
    out = {name: fn(ctx) for name, fn in CHECKS.items()}
    out["overall"] = overall_verdict(out)
    return out


DOMINANT_SHARE = 0.5  # one class taking more than max(this, 3/C) of the predictions: a warning


def check_predictions(pred: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Clean predictions: ``fail`` for a single predicted class or near-chance accuracy, ``warn`` for one dominant class.

    Near chance: clean accuracy a does not exceed chance 1/C by more than Z_NOISE binomial
    standard errors, ``(a − 1/C)/√((1/C)(1 − 1/C)/n) ≤ 2`` (a one-sided z-test, ours).
    """
    pred, y = np.asarray(pred), np.asarray(y)
    n, C = len(y), int(num_classes)
    counts = class_counts(pred[pred >= 0], C)
    top = int(counts.argmax())
    share = float(counts[top] / max(1, counts.sum()))
    acc = float((pred == y).mean()) if n else float("nan")
    chance = 1.0 / C
    z = (acc - chance) / math.sqrt(chance * (1 - chance) / n) if n and C > 1 else float("inf")
    out = {"detail": "clean predictions are spread over classes and above chance", "predicted_classes": int((counts > 0).sum()),
           "top_class": top, "top_share": round(share, 4), "clean_accuracy": acc, "chance": chance, "z_vs_chance": round(z, 2)}
    problems = []
    if C > 1 and n > 1 and int((counts > 0).sum()) == 1:
        problems.append(f"the model predicts class {top} for every sample")
    if z <= Z_NOISE:
        problems.append(f"clean accuracy {acc:.3f} is within noise of chance {chance:.3f} (z = {z:.2f} <= {Z_NOISE:g})")
    if problems:
        return {**out, "verdict": "fail", "problems": problems}
    if C >= 3 and share > max(DOMINANT_SHARE, 3.0 / C):
        return {**out, "verdict": "warn", "problems": [f"class {top} takes {pct(share, 0)}% of the predictions"]}
    return {**out, "verdict": "pass", "problems": []}


def overall_verdict(checks: dict[str, Any]) -> str:
    """``fail`` if any check failed, ``warn`` if any warned, else ``pass``."""
    verdicts = {c["verdict"] for name, c in checks.items() if name != "overall"}
    return "fail" if "fail" in verdicts else ("warn" if "warn" in verdicts else "pass")


def _same_threat(a: dict, b: dict) -> bool:
    return a.get("norm") == b.get("norm") and math.isclose(float(a["eps"]), float(b["eps"]), rel_tol=1e-9)
