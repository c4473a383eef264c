"""Per-class evaluation: the harness, metrics, sanity checks, result files, plots and reports.

Example::

    from rfbench.benchmark.eval import EvalConfig, evaluate
    result = evaluate(model, bundle, EvalConfig(attacks=["pgd", "cw"], n_per_class=100), "out/")

See ``docs/evaluation.md`` for the command line and the result schema.
"""

from rfbench.benchmark.eval.assemble import build_result
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.eval.harness import (
    AttackBallError,
    EvalConfig,
    EvalData,
    evaluate,
    evaluate_data,
    verify_in_ball,
)
from rfbench.benchmark.eval.render import markdown_table
from rfbench.benchmark.eval.result import SCHEMA, ClassSummary, EvalResult, validate_result

__all__ = [
    "SCHEMA",
    "AttackBallError",
    "ClassSummary",
    "EvalResult",
    "EvalConfig",
    "EvalData",
    "SampleFlags",
    "build_result",
    "evaluate",
    "evaluate_data",
    "markdown_table",
    "validate_result",
    "verify_in_ball",
]
