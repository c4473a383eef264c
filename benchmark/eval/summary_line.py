"""The one-line verdict under every per-class table: the worst class (or the tied classes) with its
interval, the threat model, and the checks with the name and reason of any that did not pass.

Used by ``rfbench eval``'s table (:func:`rfbench.benchmark.eval.result.markdown_table`) and the
Python API's ``Report``; the interval rule is :mod:`rfbench.core.perclass`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rfbench.core.perclass import WORST_INTERVAL_LABEL, pct, worst_classes


def worst_class_text(result: Mapping[str, Any], name: str = "worst_case") -> str:
    """``worst class Shirt at 24.3% (...interval 18.1-31.9)``, or for a tie ``worst class A, tied with 2 others:
    3 classes tie at 0.0% as the worst (A, B, C; ...)`` (the first named is the summary's ``worst_class``)."""
    s = result["summary"][name]
    lo, hi = s["worst_ci95"]
    tied = worst_classes(result["per_class"][name]) or [s["worst_class"]]
    interval = f"{WORST_INTERVAL_LABEL} {pct(lo)}-{pct(hi)}"
    if len(tied) == 1:
        return f"worst class {result['classes'][tied[0]]} at {pct(s['worst'])}% ({interval})"
    names = ", ".join(result["classes"][k] for k in tied)
    others = len(tied) - 1
    return (f"worst class {result['classes'][tied[0]]}, tied with {others} other{'s' if others > 1 else ''}: "
            f"{len(tied)} classes tie at {pct(s['worst'])}% as the worst ({names}; {interval})")


def check_problems(checks: dict[str, Any]) -> list[str]:
    """``name (verdict): reason`` for every check that failed or warned, in the order they ran."""
    out = []
    for name, c in checks.items():
        if name == "overall" or not isinstance(c, dict) or c.get("verdict") not in ("fail", "warn"):
            continue
        reasons = list(c.get("problems") or []) + list((c.get("findings") or {}).values())
        if c.get("violations"):
            reasons.append(f"{len(c['violations'])} violation(s) of '{c.get('detail', name)}'")
        if c.get("flags"):
            reasons.append("flagged by " + ", ".join(sorted(c["flags"])))
        out.append(f"{name} ({c['verdict']}): {'; '.join(reasons) or c.get('detail', '')}")
    return out


def checks_text(checks: dict[str, Any]) -> str:
    """``checks: pass``, or ``checks: fail (predictions (fail): the model predicts class 1 for every sample)``."""
    problems = check_problems(checks)
    return f"checks: {checks['overall']}" + (f" ({' | '.join(problems)})" if problems else "")


def summary_line(result: Mapping[str, Any]) -> str:
    """The footer line of the per-class table."""
    over = ", ".join(result["worst_case_over"]) or "(no attack)"
    return (f"worst case over {over}; {worst_class_text(result)}; eps {result['robustbench']['eps']} "
            f"({result['threat']['norm']}); {checks_text(result['checks'])}")
