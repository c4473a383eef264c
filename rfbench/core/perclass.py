"""The one definition of every per-class number rfbench reports, and the one percent formatter.

Everything that measures a per-class accuracy (the evaluation harness, the
trainer's training and validation statistics, the defenses' own validation
measurements, calibration, the leaderboard checks) calls this module; see
``docs/evaluation.md``, "Definitions", for the same rules in prose.

* **Correct / robust.** A sample is *clean-correct* when the clean prediction
  is its label.  It is *robust to an attack* when it is clean-correct **and**
  the prediction on the attack's adversarial input is its label
  (:func:`robust`; the AutoAttack / RobustBench convention: Croce & Hein, ICML
  2020; Croce et al., NeurIPS 2021 Datasets and Benchmarks).  It is robust in
  the *worst case* when it is robust to every attack of the worst case.  Per
  sample therefore worst case ⊆ each attack ⊆ clean.
* **Per-class accuracy** of class ``k`` = (number of class-``k`` samples that
  are correct) / (number of class-``k`` samples), a fraction in [0, 1]
  (:func:`per_class_accuracy`, :func:`accuracy_from_counts`).  A class with
  no sample has accuracy **NaN**, never 0; every consumer treats NaN on purpose
  (summaries skip it, defenses keep a previous value or a fallback).
* **Intervals** are binomial: the Wilson score interval of ``k`` correct out of
  ``n`` (Wilson, JASA 1927), exact at ``k = 0`` (lower end 0, upper end > 0)
  and at ``k = n`` (:func:`wilson_interval`).  The worst-class interval is the
  interval of ``min_k p_k`` built from Bonferroni-adjusted per-class intervals
  (level ``1 − α/C``): ``[min_k lo_k, min_k hi_k]`` (:func:`worst_class_interval`).
* **Units.** Every number in code and in result files is a fraction; only
  rendering turns one into a percentage, through :func:`pct`.

Both NumPy arrays and torch tensors are accepted where noted; the result has
the input's kind (a tensor stays on its device).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

LEVEL = 0.95


# -- counting --------------------------------------------------------------------------------------
def class_counts(y: Any, num_classes: int, weights: Any = None) -> Any:
    """Per class, the number of samples (or the sum of ``weights``) of ``y``; tensor in, tensor out.

    Boolean ``weights`` count the samples where they are true; numeric weights give float64 sums.
    """
    if torch.is_tensor(y):  # index_add_, not bincount or masking: no host-device synchronisation on CUDA
        y = y.long()
        w = torch.ones_like(y, dtype=torch.bool) if weights is None else torch.as_tensor(weights, device=y.device)
        if w.dtype == torch.bool:
            return torch.zeros(num_classes, dtype=torch.long, device=y.device).index_add_(0, y, w.long())
        return torch.zeros(num_classes, dtype=torch.float64, device=y.device).index_add_(0, y, w.double())
    y = np.asarray(y, dtype=np.int64)
    if weights is None:
        return np.bincount(y, minlength=num_classes)
    w = np.asarray(weights)
    if w.dtype == bool:
        return np.bincount(y[w], minlength=num_classes)
    return np.bincount(y, weights=w.astype(float), minlength=num_classes)


def accuracy_from_counts(correct: Any, n: Any) -> Any:
    """``correct / n`` per class as float64; NaN where ``n == 0`` (tensor in, tensor out)."""
    if torch.is_tensor(correct) or torch.is_tensor(n):
        correct, n = torch.as_tensor(correct).double(), torch.as_tensor(n).double()
        return torch.where(n > 0, correct / n.clamp(min=1), torch.full_like(n, float("nan")))
    correct, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    return np.where(n > 0, correct / np.maximum(n, 1), np.nan)


def per_class_mean(values: Any, y: Any, num_classes: int) -> Any:
    """Mean of ``values`` over the samples of each class (float64); NaN for a class with no sample."""
    if torch.is_tensor(values):
        values = values.detach().double()
        y = torch.as_tensor(y, device=values.device)
    else:
        values = np.asarray(values, dtype=float)
    return accuracy_from_counts(class_counts(y, num_classes, values), class_counts(y, num_classes))


def per_class_accuracy(correct: Any, y: Any, num_classes: int) -> Any:
    """Fraction of ``correct`` samples in each class, ``(C,)`` float64; NaN for a class with no sample."""
    if torch.is_tensor(correct):
        return accuracy_from_counts(class_counts(y, num_classes, correct.bool()), class_counts(y, num_classes))
    return accuracy_from_counts(class_counts(y, num_classes, np.asarray(correct, dtype=bool)), class_counts(y, num_classes))


def robust(clean_correct: Any, adv_correct: Any) -> Any:
    """Per sample: robust to an attack = clean-correct AND correct on the adversarial input."""
    return clean_correct & adv_correct


# -- summaries that skip empty classes ------------------------------------------------------------
def nan_mean(values: Any) -> float:
    """Mean over the classes that have samples (NaN when none has)."""
    a = np.asarray(values, dtype=float)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def nan_min(values: Any) -> float:
    """Worst class among those that have samples (NaN when none has)."""
    a = np.asarray(values, dtype=float)
    a = a[~np.isnan(a)]
    return float(a.min()) if a.size else float("nan")


# -- binomial intervals ---------------------------------------------------------------------------
def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes out of ``n`` (Wilson, JASA 1927), fractions in [0, 1].

    At ``k = 0`` the lower end is exactly 0 and the upper end is positive; at
    ``k = n`` the upper end is exactly 1.  ``n = 0`` gives ``(nan, nan)``.
    """
    k, n = int(k), int(n)
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = _z(level)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def per_class_intervals(correct: Any, y: Any, num_classes: int, level: float = LEVEL) -> np.ndarray:
    """``(C, 2)`` Wilson intervals of each class's accuracy (NaN rows for empty classes)."""
    k = np.asarray(class_counts(np.asarray(y), num_classes, np.asarray(correct, dtype=bool)))
    n = np.asarray(class_counts(np.asarray(y), num_classes))
    return np.array([wilson_interval(kc, nc, level) for kc, nc in zip(k, n)], dtype=float).reshape(num_classes, 2)


def worst_class_interval(correct: Any, y: Any, num_classes: int, level: float = LEVEL) -> tuple[float, float]:
    """Interval for the worst class's accuracy ``min_k p_k``: ``[min_k lo_k, min_k hi_k]`` over the
    classes with samples, each ``(lo_k, hi_k)`` a Wilson interval at level ``1 − (1 − level)/C``
    (Bonferroni), so that all hold together with probability ≥ ``level`` and so does this one."""
    y = np.asarray(y)
    return worst_class_interval_from_counts(class_counts(y, num_classes, np.asarray(correct, dtype=bool)),
                                            class_counts(y, num_classes), level)


def worst_class_interval_from_counts(k: Any, n: Any, level: float = LEVEL) -> tuple[float, float]:
    """:func:`worst_class_interval` from per-class counts: ``k[c]`` correct out of ``n[c]`` samples
    (classes with ``n[c] == 0`` are left out; none left gives ``(nan, nan)``)."""
    k, n = np.asarray(k, dtype=np.int64).ravel(), np.asarray(n, dtype=np.int64).ravel()
    live = n > 0
    if not live.any():
        return float("nan"), float("nan")
    adjusted = 1 - (1 - level) / int(live.sum())
    ci = np.array([wilson_interval(kc, nc, adjusted) for kc, nc in zip(k[live], n[live])], dtype=float)
    return float(ci[:, 0].min()), float(ci[:, 1].min())


# -- rendering ------------------------------------------------------------------------------------
def pct(x: Any, digits: int = 1, *, sign: bool = False, missing: str = "-") -> str:
    """The one fraction → percent rendering: ``pct(0.1234) == "12.3"``; None/NaN → ``missing``.

    No ``%`` sign is added (tables say "(%)" in their header); ``sign=True`` prints ``+``/``-``
    (for differences, in points).
    """
    if x is None:
        return missing
    v = float(x)
    if math.isnan(v):
        return missing
    return f"{100 * v:{'+' if sign else ''}.{digits}f}"


def to_percent(x: Any) -> Any:
    """Fractions → percentage numbers, for plots and tables that format numbers themselves
    (same scaling as :func:`pct`; NaN stays NaN)."""
    return np.asanyarray(x, dtype=float) * 100  # a masked array stays masked


# -- what an interval is, in words (every rendering uses these) ----------------------------------------
#: a per-class interval: :func:`wilson_interval` at :data:`LEVEL`, for that class alone
CLASS_INTERVAL_LABEL = "95% Wilson interval"
#: the worst class's interval: :func:`worst_class_interval` (Bonferroni over the classes, so it covers ``min_k p_k``)
WORST_INTERVAL_LABEL = "simultaneous 95% interval: Wilson, Bonferroni-adjusted over the classes"


def worst_classes(values: Any, tol: float = 1e-12) -> list[int]:
    """The indices of every class at the minimum (ties included), among the classes that have samples."""
    a = np.asarray(values, dtype=float)
    m = nan_min(a)
    return [] if math.isnan(m) else [int(k) for k in np.flatnonzero(np.abs(a - m) <= tol)]
