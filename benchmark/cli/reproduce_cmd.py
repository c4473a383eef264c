"""``rfbench reproduce``: rerun a published table and compare our numbers with the paper's, cell by cell."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EPILOG = """\
tables (leaderboards/papers/<table>.yaml; each published number names its paper and table):
  cfa-table1         CFA Table 1: PGD-AT, TRADES (+CFA), FRL; CIFAR-10, PreAct-ResNet-18, AutoAttack
  dafa-cifar10       DAFA's CIFAR-10 table: TRADES, FRL, CFA, WAT, DAFA; ResNet-18
  atbsl-cifar10lt50  AT-BSL on CIFAR-10-LT rho=50: clean, PGD-20, CW, AutoAttack
  reat-cifar10lt     REAT vs PGD-AT vs AT-BSL on CIFAR-10-LT (indicative: the published numbers use an LT test set)

examples:
  rfbench reproduce cfa-table1 --dry-run                 (the grid and its estimated GPU-hours)
  rfbench reproduce cfa-table1 --executor ray --ray-address auto
  rfbench reproduce cfa-table1 --rows pgd-at,trades --seeds 0,1
  rfbench reproduce dafa-cifar10 --scale smoke           (the same table on Fashion-MNIST, CPU, minutes)

Writes OUT/comparison.md and OUT/comparison.json: ours (mean ± std over seeds) beside the
published number, the difference, and a verdict per cell (within ±2 points on averages,
±4 on worst-class numbers, or the table's own tolerance).  Each run is an `rfbench run`
directory under OUT/<row>/seed<k>: finished runs are reused when the command is repeated.
"""


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    from rfbench.benchmark.leaderboard.schema import leaderboards_root
    from rfbench.benchmark.runner.executors import ExecutorOptions
    from rfbench.benchmark.runner.reproduce import dry_run_text, load_table, reproduce, table_cells, table_path

    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    table = load_table(table_path(args.table, leaderboards_root(args.root)))
    out = Path(args.out or Path("runs") / "reproduce" / (table.id + ("-smoke" if args.scale == "smoke" else "")))
    rows = [r for r in (args.rows or "").split(",") if r]
    cells = table_cells(table, args.scale, out, rows=rows or None, seeds=args.seeds, device=args.device,
                        overrides=args.overrides)
    if args.dry_run:
        print(dry_run_text(table, cells, args.scale, args.throughput))
        return 0
    opts = ExecutorOptions(force=args.force, quiet=args.quiet, address=args.ray_address, num_cpus=args.ray_cpus,
                           gpus=args.gpus_per_run)
    records, md = reproduce(table, cells, args.scale, out, args.executor, opts)
    print(md)
    print(f"comparison in {out}/comparison.md and comparison.json", file=sys.stderr)
    return 1 if any(r["verdict"] == "not run" for r in records) else 0


def _positive_float(text: str) -> float:
    """A finite number > 0 (``--throughput``): 0, negatives and NaN are argparse errors, never replaced by a default."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter
    from rfbench.benchmark.runner.executors import EXECUTORS

    p = sub.add_parser("reproduce", help="rerun a paper table and compare with the published numbers",
                       description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("table", metavar="TABLE", help="table id (leaderboards/papers/<id>.yaml) or a path to a table YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides applied to every run (right after TABLE)")
    p.add_argument("--scale", choices=["full", "smoke"], default="full",
                   help="full: the paper's setting; smoke: the same table on Fashion-MNIST on a CPU")
    p.add_argument("--dry-run", action="store_true", help="print the grid and its estimated cost, run nothing")
    p.add_argument("--throughput", type=_positive_float, metavar="TFLOPS", help="assumed throughput for --dry-run "
                   "(default: 320 for GPU runs, 0.09 for CPU runs)")
    p.add_argument("--rows", metavar="A,B", help="only these rows")
    p.add_argument("--seeds", type=_ints, metavar="0,1,...", help="seeds (default: the table's)")
    p.add_argument("--executor", default="local", choices=EXECUTORS.names(), help="how the runs are executed")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (default: a local Ray)")
    p.add_argument("--ray-cpus", type=int, metavar="N", help="CPUs of the local Ray")
    p.add_argument("--gpus-per-run", type=float, metavar="G", help="GPUs per Ray task (default: 1 for CUDA runs)")
    p.add_argument("--device", help="device of every run (auto, cpu, cuda)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/reproduce/<table>[-smoke])")
    p.add_argument("--root", metavar="DIR", help="repository root holding leaderboards/")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    p.set_defaults(func=run)
