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
  rfbench report a.json b.json --label baseline --label ours        column labels (default: short model names)
Markdown shows percentages; CSV and JSON keep fractions.  --diff between two results refuses results
evaluated on different samples (dataset, per-class counts, sample hashes); --force compares anyway, with a warning.
"""


def _check_same_samples(results, force: bool, notes: dict) -> None:
    """Refuse (or, with --force, warn about) a model diff between results on different sample sets."""
    import logging

    from rfbench.benchmark.eval import report as R
    from rfbench.core.errors import ConfigError

    (na, a), (nb, b) = results
    diff = R.sample_set_difference(a, b)
    if diff:
        if not force:
            raise ConfigError(f"{na} and {nb} were evaluated on different samples ({'; '.join(diff)}); a per-class "
                              "difference would compare different images. Evaluate both on the same set, or pass --force")
        logging.getLogger(__name__).warning("comparing %s and %s although their samples differ: %s", na, nb, "; ".join(diff))
        notes["WARNING"] = f"different samples ({'; '.join(diff)})"
    elif diff is None:
        logging.getLogger(__name__).warning("cannot verify that %s and %s used the same samples (no sample hashes in "
                                            "the result files; written by an older rfbench)", na, nb)


def run(args: argparse.Namespace) -> int:
    from rfbench.benchmark.eval import report as R
    from rfbench.core.errors import ConfigError

    results = R.load_results(args.results, args.label or None)
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
        _check_same_samples(results, args.force, notes)
        df, stats = R.diff_models(results[0], results[1], only)
        tables = {f"{stats['model']} - {stats['baseline']}": df}
        notes.update({f"DAFA rho ({n})": v for n, v in stats["dafa_rho"].items()})
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
    p.add_argument("--label", action="append", default=[], metavar="NAME",
                   help="label of a result in the tables (repeat once per result, in order) [default: the model's "
                        "short name, else the result's folder]")
    p.add_argument("--force", action="store_true",
                   help="--diff two results even if they were evaluated on different samples (with a warning)")
    p.set_defaults(func=run)
