"""Per-class metrics of an evaluation (``docs/evaluation.md``, "Definitions").

Pure NumPy on per-sample arrays: ``y`` (true labels), a boolean ``correct``
per sample, or predictions.  Per-class accuracy, the robust rule and the
binomial intervals are defined once, in :mod:`rfbench.core.perclass`
(re-exported here); this module builds the summaries on top.  Accuracies are
fractions in [0,1]; a class with no evaluated sample has accuracy NaN and is
left out of every summary.

Example::

    acc = per_class_accuracy(correct, y, num_classes=10)
    summarize(acc)   # {'mean': ..., 'worst': ..., 'worst_class': 3, 'gap': ..., 'std': ..., 'nsd': ..., 'tail20': ...}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rfbench.core.perclass import class_counts, per_class_accuracy, per_class_intervals, worst_class_interval  # noqa: F401  (per_class_accuracy and the intervals re-exported)

TAIL_FRACTION = 0.2
CIFAR10_LT_GROUPS = {"head": [0, 1, 2], "middle": [3, 4, 5, 6], "tail": [7, 8, 9]}
SHOT_THRESHOLDS = (100, 20)  # many-shot > 100 training images, few-shot < 20 (CIFAR-100-LT convention)


def tail_mean(acc: np.ndarray, fraction: float = TAIL_FRACTION) -> float:
    """Mean accuracy of the worst ``ceil(fraction·C)`` classes (the "worst-20%" mean)."""
    a = np.sort(acc[~np.isnan(acc)])
    k = max(1, math.ceil(fraction * len(a)))
    return float(a[:k].mean())


def summarize(acc: np.ndarray) -> dict[str, Any]:
    """Summary of per-class accuracies: balanced mean, worst and best class, gap, SD (population), NSD = SD/mean, tail20.

    The mean is the per-class (balanced) mean, as ``docs/evaluation.md`` asks for long-tailed sets.
    Classes with NaN accuracy (no sample) are left out.
    """
    acc = np.asarray(acc, dtype=float)
    valid = ~np.isnan(acc)
    a = acc[valid]
    idx = np.flatnonzero(valid)
    mean = float(a.mean())
    std = float(a.std(ddof=0))
    return {
        "mean": mean,
        "worst": float(a.min()),
        "worst_class": int(idx[np.argmin(a)]),
        "best": float(a.max()),
        "best_class": int(idx[np.argmax(a)]),
        "gap": float(a.max() - a.min()),
        "std": std,
        "nsd": std / mean if mean > 0 else float("nan"),
        "tail20": tail_mean(a),
    }


def confusion_matrix(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``count[true class, predicted class]`` (on adversarial predictions: the confusion flow)."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def class_false_positive_score(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """CFPS_j = #(pred = j and y ≠ j) / #misclassified: which class absorbs the errors (``docs/evaluation.md``)."""
    wrong = pred != y
    total = int(wrong.sum())
    counts = class_counts(pred[wrong], num_classes).astype(float)
    return counts / total if total else np.zeros(num_classes)


def boundary_error(clean: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """Per-class boundary error clean_k − robust_k (Zhang et al., TRADES, ICML 2019, Eq. 1 decomposition)."""
    return np.asarray(clean) - np.asarray(robust)


def class_groups(train_counts: list[int] | None, imbalance_ratio: float | None) -> dict[str, list[int]] | None:
    """Head/middle/tail groups of a long-tailed training set, or None for a balanced one.

    10 classes: head 0–2, middle 3–6, tail 7–9 (CIFAR-10-LT convention).  Otherwise
    many-shot (> 100 training images), medium (20–100) and few-shot (< 20).
    """
    if not imbalance_ratio or not train_counts:
        return None
    if len(train_counts) == 10:
        return {k: list(v) for k, v in CIFAR10_LT_GROUPS.items()}
    hi, lo = SHOT_THRESHOLDS
    groups = {
        "many": [c for c, n in enumerate(train_counts) if n > hi],
        "medium": [c for c, n in enumerate(train_counts) if lo <= n <= hi],
        "few": [c for c, n in enumerate(train_counts) if n < lo],
    }
    return {k: v for k, v in groups.items() if v}


def group_means(acc: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
    """Mean accuracy of each class group."""
    return {g: float(np.nanmean(np.asarray(acc)[members])) for g, members in groups.items()}


def find_linear_head(model: torch.nn.Module) -> torch.Tensor | None:
    """The classifier weight ``(C, d)``: of ``model.head`` (or of a wrapped ``.model``/``.module``), else of the
    last ``nn.Linear`` among ``model.modules()`` (registration order: a user's ``fc``, ``linear``, ``classifier``)."""
    for m in (model, getattr(model, "model", None), getattr(model, "module", None)):
        head = getattr(m, "head", None) if m is not None else None
        w = getattr(head, "weight", None)
        if torch.is_tensor(w) and w.ndim == 2:
            return w.detach()
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linear[-1].weight.detach() if linear else None


def class_weight_norms(model: torch.nn.Module) -> np.ndarray | None:
    """‖w_k‖₂ of each class's classifier weight vector (Tian et al., "Intriguing class-wise properties", 2021)."""
    w = find_linear_head(model)
    return None if w is None else w.float().norm(dim=1).cpu().numpy()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two per-class vectors (NaN when either is constant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def dafa_rho(avg_model: float, worst_model: float, avg_base: float, worst_base: float) -> float:
    """DAFA's ρ (Lee et al., ICLR 2024): (worst_m − worst_b)/worst_b − (avg_b − avg_m)/avg_b.

    Positive when the worst class gains more (relatively) than the average loses.
    """
    return (worst_model - worst_base) / worst_base - (avg_base - avg_model) / avg_base
