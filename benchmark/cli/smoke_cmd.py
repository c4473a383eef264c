"""``rfbench smoke``: every registered defense (or the ones named) trained for a few steps and evaluated, on a CPU.

Each defense runs the fashion-mnist-linf track shrunk to a few optimiser
steps and a cheap attack suite on 300 test images; the command asserts that
training stays finite, that the sanity checks pass and that every result
file validates, prints the smoke table with the time per defense, and exits
1 if any defense failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

EPILOG = """\
examples:
  rfbench smoke                                            (every registered defense)
  rfbench smoke --defense trades --defense cfa
  rfbench smoke --defense examples/my_defense.py:WorstClassAT  (a defense in your own file)
  rfbench smoke --defense my_package.defenses:MyDefense         (an importable plugin)

CI: .github/workflows/smoke.yml installs rfbench and runs `rfbench smoke` for a
defense plugin; copy it into your defense's repository (see leaderboards/SUBMITTING.md).
"""


def run(args: argparse.Namespace) -> int:
    from rfbench.benchmark.leaderboard.schema import leaderboards_root
    from rfbench.benchmark.runner.smoke import TRACK, smoke_one, smoke_table
    from rfbench.defenses import list_defenses

    logging.getLogger().setLevel(logging.DEBUG if args.verbose_smoke else logging.WARNING)
    defenses = args.defense or list_defenses()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rfbench-smoke-"))
    track = leaderboards_root(args.root) / TRACK
    if not track.is_file():
        print(f"rfbench: error: the smoke benchmark shrinks {TRACK}, which is not at {track}; run it from an rfbench "
              "checkout or pass --root CHECKOUT", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    rows = []
    for name in defenses:
        row = smoke_one(name, out, track)
        print(f"{'ok  ' if row.ok else 'FAIL'} {name:<16} {row.seconds:6.1f} s" + (f"  {row.error}" if row.error else ""),
              file=sys.stderr, flush=True)
        rows.append(row)
    print(smoke_table(rows))
    failed = [r.defense for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)}/{len(rows)} defenses pass in {time.monotonic() - t0:.0f} s; runs in {out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter

    p = sub.add_parser("smoke", help="a few training steps + a cheap evaluation for every defense (CI)",
                       description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--defense", action="append", metavar="NAME",
                   help="defense to test (repeatable; name, installed plugin, module:Class or file.py:Class); "
                   "default: every registered defense")
    p.add_argument("--out", metavar="DIR", help="where the smoke runs go (default: a new temporary directory)")
    p.add_argument("--root", metavar="DIR", help="repository root holding leaderboards/ (for the track)")
    p.add_argument("--verbose-smoke", action="store_true", help="show the runs' log messages")
    p.set_defaults(func=run)
