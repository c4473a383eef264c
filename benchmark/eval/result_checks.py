"""Value checks of a result read from disk, beyond its shape (:func:`rfbench.benchmark.eval.result.validate_result`).

A ``result.json`` is data a person may have edited or damaged.  Its shape is checked by
``validate_result``; here its values are: class names (a non-empty list of distinct strings),
each summary's numbers (finite fractions, never ``NaN``, which would silently unscale a whole
column of a report), ``worst_class`` (an integer index of a class), and the one relation every
result obeys: a class's accuracy under an attack never exceeds its clean accuracy (a sample
counts as robust only when it is also clean-correct, :func:`rfbench.core.perclass.robust`).
Each problem raises ``ValueError`` naming the value and why.
"""

from __future__ import annotations

import math
from typing import Any

#: summary fields that are fractions in [0, 1] (``null`` allowed for a name without samples)
FRACTION_KEYS = ("mean", "worst", "tail20", "best")
#: summary fields that are finite numbers
NUMBER_KEYS = ("gap", "std", "nsd")
#: rounding allowed when comparing robust and clean accuracy (both are ratios of the same counts)
TOLERANCE = 1e-9


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_classes(result: dict) -> None:
    """Raise ``ValueError`` unless ``result["classes"]`` is a non-empty list of distinct strings (checked first)."""
    classes = result.get("classes") if isinstance(result, dict) else None
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"classes is {classes!r}: expected a non-empty list of class names")
    if not all(isinstance(c, str) for c in classes):
        raise ValueError("classes must all be strings")
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise ValueError(f"class name {dup!r} appears more than once")


def check_result_values(result: dict) -> None:
    """Raise ``ValueError`` naming the first bad value of ``result`` (which has passed ``validate_result``)."""
    check_classes(result)
    classes = result["classes"]
    n = len(classes)
    for name, s in result["summary"].items():
        for key in FRACTION_KEYS:
            v = s.get(key)
            if v is not None and not (_finite(v) and 0 <= v <= 1):
                raise ValueError(f"summary[{name!r}].{key} is {v!r}: expected a fraction in [0, 1] or null")
        for key in NUMBER_KEYS:
            v = s.get(key)
            if v is not None and not _finite(v):
                raise ValueError(f"summary[{name!r}].{key} is {v!r}: expected a finite number or null")
        for key in ("worst_class", "best_class"):
            v = s.get(key)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n):
                raise ValueError(f"summary[{name!r}].{key} is {v!r}: expected a class index in [0, {n - 1}]")
    clean = result["per_class"]["clean"]
    for name, accs in result["per_class"].items():
        if name == "clean":
            continue
        for k, (a, c) in enumerate(zip(accs, clean)):
            if a is not None and c is not None and a > c + TOLERANCE:
                raise ValueError(f"per_class[{name!r}] of class {classes[k]!r} is {a}, above its clean accuracy {c}: "
                                 "robust accuracy cannot exceed clean accuracy")
