"""``rfbench run``: one benchmark run from a run config (a leaderboard track or a paper-table cell).

Stages: [pretrain ->] train -> select checkpoints (best on the validation split,
and last) -> evaluate each with the config's attack suite -> result.json,
report.md and plots in the run directory.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  rfbench run leaderboards/fashion-mnist-linf/track.yaml --defense pgd-at
  rfbench run leaderboards/fashion-mnist-linf/track.yaml --defense trades --seed 1 --out runs/fm-trades-s1
  rfbench run leaderboards/fashion-mnist-linf/track.yaml --defense examples/my_defense.py:WorstClassAT \\
      train.defense_args.boost=2
  rfbench run leaderboards/cifar10-linf/track.yaml --defense cfa --device cuda
  rfbench run my_run.yaml train.epochs=1 eval.n_per_class=20        (dotted key=value overrides)

key=value overrides go right after CONFIG.yaml, before any --option.

A run config holds `train:` (rfbench train keys), `eval:` (rfbench eval keys: attacks,
eps, n_per_class, ...), `checkpoints:` ([best, last]), optionally `pretrain:` (a stage
whose best checkpoint initialises training, as FRL needs) and `defense_presets:`
(per-defense settings a short budget needs, e.g. DAFA's warm-up length).

The run directory (default runs/<name>/<defense>-s<seed>) ends up with result.json
(schema rfbench.run/1), report.md, per_class.png, training.png, train/ and eval-*/.
Rerunning the same command skips finished stages and resumes a killed one; a
finished run is never overwritten unless --force is given.
"""


def run(args: argparse.Namespace) -> int:
    from rfbench.benchmark.runner import execute_run, load_run_config, resolve_run
    from rfbench.benchmark.runner.report import percent_markdown, summary_frame
    from rfbench.core.io import read_json

    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    resolved = resolve_run(load_run_config(args.config), defense=args.defense, seed=args.seed, out=args.out,
                           overrides=args.overrides, device=args.device, quiet=args.quiet)
    from rfbench.core.io.lock import exclusive_dir

    with exclusive_dir(resolved.out, "run directory"):
        out = execute_run(resolved, force=args.force, quiet=args.quiet)
    result = read_json(out / "result.json")
    print(percent_markdown(summary_frame(result)))
    print(f"run directory: {out} (result.json, report.md, per_class.png)", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter, add_allow_code

    p = sub.add_parser("run", help="train, select and evaluate one run from a run config or track",
                       description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("config", metavar="CONFIG.yaml", help="run config (e.g. leaderboards/<track>/track.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the run config, applied last (right after CONFIG.yaml)")
    p.add_argument("--defense", help="defense to run (name, installed plugin, module:Class or file.py:Class); "
                   "default: the config's train.defense")
    p.add_argument("--seed", type=int, help="training seed (default: the config's train.seed)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's train.device)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: the config's out, else runs/<name>/<defense>-s<seed>)")
    p.add_argument("--force", action="store_true", help="start over even if the run directory holds a finished run")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    add_allow_code(p, "CONFIG.yaml (train.defense)")
    p.set_defaults(func=run)
