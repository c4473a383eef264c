"""The ``rfbench`` command line.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)``, which registers its parser and sets
``func=run`` (``run(args) -> int``).  :data:`SUBCOMMANDS` lists the modules in
the order ``rfbench --help`` shows them.

Errors a user can cause are :class:`~rfbench.benchmark.errors.RfbenchError` and are
printed as one line (``rfbench: error: ...``, exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rfbench.benchmark import __version__
from rfbench.benchmark.errors import RfbenchError

SUBCOMMANDS = [
    "train",
    "eval",
    "report",
    "calibrate",
    "data",
    "list",
    "run",
    "sweep",
    "reproduce",
    "leaderboard",
    "smoke",
]

DESCRIPTION = """\
rfbench: per-class robustness of adversarially trained models.

Typical session:
  rfbench train --dataset fashion-mnist --model smallcnn --defense pgd-at --epochs 2 --out runs/demo
  rfbench eval --run runs/demo --attack pgd:steps=20 --attack cw --out runs/demo/eval
  rfbench report runs/demo/eval/result.json

Run `rfbench COMMAND --help` for each command's options.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps hand-wrapped descriptions and shows every default a flag's help does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rfbench", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"rfbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"rfbench.benchmark.cli.{name.replace('-', '_')}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"rfbench.benchmark.cli.{name.replace('-', '_')}_cmd":
                continue  # subcommand not shipped in this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except RfbenchError as exc:
        print(f"rfbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rfbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
