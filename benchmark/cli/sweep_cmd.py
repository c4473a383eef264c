"""``rfbench sweep``: run a grid of defenses × datasets × seeds × override variants, and summarise over seeds."""

from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """\
grid file (YAML):
  base: leaderboards/fashion-mnist-linf/track.yaml    # any run config
  defenses: [pgd-at, trades, cfa]
  seeds: [0, 1, 2]
  overrides: {default: [], short: [train.epochs=1]}  # named variants (optional)
  datasets: [fashion-mnist]                          # optional
  out: runs/sweep-fm

examples:
  rfbench sweep grid.yaml
  rfbench sweep grid.yaml --executor ray                        (a local Ray on this machine)
  rfbench sweep grid.yaml --executor ray --ray-address auto     (the running Ray cluster)
  rfbench sweep grid.yaml eval.n_per_class=20                   (key=value applied to every run)

Every run writes OUT/<dataset>/<defense>/<variant>/seed<k>/ (an `rfbench run` directory:
finished runs are skipped when the sweep is run again).  OUT/summary.md and
summary.json give mean ± std over seeds (sample std), computed from the runs' files,
so they are the same whichever executor ran the grid.  Ray: `pip install rfbench[ray]`;
each run asks for 1 GPU when it trains on CUDA (0 on CPU, or --gpus-per-run); on a
cluster, every node needs rfbench installed and OUT on a shared filesystem.
"""


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rfbench.benchmark.runner.executors import ExecutorOptions
    from rfbench.benchmark.runner.sweep import load_grid, run_sweep

    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    grid = load_grid(args.grid)
    if args.out:
        grid.out = args.out
    opts = ExecutorOptions(force=args.force, quiet=args.quiet, address=args.ray_address, num_cpus=args.ray_cpus,
                           gpus=args.gpus_per_run, cpus=args.cpus_per_run)
    from rfbench.core.io.lock import exclusive_dir

    with exclusive_dir(grid.out, "sweep directory"):
        outcomes, md = run_sweep(grid, args.executor, opts, grid_path=Path(args.grid), device=args.device,
                                 extra_overrides=args.overrides)
    print(md)
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"FAILED {o.key}: {o.error}", file=sys.stderr)
    print(f"{len(outcomes) - len(failed)}/{len(outcomes)} runs finished; summary in {grid.out}/summary.md", file=sys.stderr)
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter, add_allow_code
    from rfbench.benchmark.runner.executors import EXECUTORS

    p = sub.add_parser("sweep", help="run a grid of runs (locally or on Ray) and summarise over seeds",
                       description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("grid", metavar="GRID.yaml", help="grid file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides applied to every run (right after GRID.yaml)")
    p.add_argument("--executor", default="local", choices=EXECUTORS.names(), help="how the runs are executed")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (auto, ray://host:10001); default: start a local Ray")
    p.add_argument("--ray-cpus", type=int, metavar="N", help="CPUs of the local Ray (default: all)")
    p.add_argument("--gpus-per-run", type=float, metavar="G", help="GPUs each Ray task asks for (default: 1 for CUDA runs, 0 on CPU)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, metavar="C", help="CPUs each Ray task asks for")
    p.add_argument("--device", help="device of every run (auto, cpu, cuda)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the grid's out)")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    add_allow_code(p, "GRID.yaml or its base config")
    p.set_defaults(func=run)
