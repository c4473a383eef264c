"""``rfbench report``: side-by-side tables of evaluation results, and per-class differences."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  rfbench report runs/a/eval/result.json runs/b/eval/result.json          summary + per-class tables
  rfbench report runs/a/eval/result.json --diff pgd-20,temperature-pgd-20-T0.5
                                         per class: T-PGD minus PGD, from the weakest class under PGD
  rfbench report base.json model.json --diff                             per class: model minus baseline, DAFA's rho
  rfbench report a.json b.json --format csv --names clean,worst_case
Markdown shows percentages; CSV and JSON keep fractions.
"""


def run(args: argparse.Namespace) -> int:
    from rfbench.benchmark.errors import ConfigError
    from rfbench.benchmark.eval import report as R

    results = R.load_results(args.results)
    only = [n.strip() for n in args.names.split(",")] if args.names else None
    notes: dict = {}
    if args.diff is None:
        tables = {"summary": R.summary_frame(results, only), "per-class accuracy": R.per_class_frame(results, only)}
    elif args.diff:
        pair = [n.strip() for n in args.diff.split(",")]
        if len(pair) != 2:
            raise ConfigError(f"--diff A,B takes two names of one result, got {args.diff!r}")
        tables = {}
        for model, res in results:
            df, stats = R.diff_attacks(res, *pair)
            tables[f"{model}: {pair[1]} - {pair[0]}"] = df
            notes.update({f"{model} {k}": v for k, v in stats.items()})
    else:
        if len(results) != 2:
            raise ConfigError("--diff without names compares two results (baseline first); give exactly two files")
        df, stats = R.diff_models(results[0], results[1], only)
        tables = {f"{stats['model']} - {stats['baseline']}": df}
        notes = {f"DAFA rho ({n})": v for n, v in stats["dafa_rho"].items()}
    print(R.render(tables, notes, args.format), end="")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter

    p = sub.add_parser("report", help="tables of one or more evaluation results", description=__doc__,
                       epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("results", nargs="+", metavar="RESULT.json", help="result files written by `rfbench eval`")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md", help="output format")
    p.add_argument("--names", metavar="N1,N2", help="only these names (clean, attack labels, worst_case)")
    p.add_argument("--diff", nargs="?", const="", default=None, metavar="A,B",
                   help="per-class difference: of attack B minus attack A in each result, or (no value) of the "
                        "second result minus the first")
    p.set_defaults(func=run)
