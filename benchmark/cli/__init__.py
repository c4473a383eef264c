"""The ``rfbench`` command line.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)``, which registers its parser and sets
``func=run`` (``run(args) -> int``).  :data:`SUBCOMMANDS` lists the modules in
the order ``rfbench --help`` shows them.

Errors a user can cause are :class:`~rfbench.core.errors.RfbenchError` and are
printed as one line (``rfbench: error: ...``, exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rfbench.core.errors import RfbenchError
from rfbench.core.version import __version__

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
    "zoo",
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


#: subcommands whose parser defines ``--allow-code`` itself; for the others the flag is read here
_OWN_ALLOW_CODE = {"eval"}
#: flags and overrides whose value, typed by the user, names code that may be imported
_CODE_FLAGS = ("--defense", "--model")
_CODE_OVERRIDES = ("defense=", "model=")


def _code_permissions(argv: list[str]) -> list[str]:
    """Record which code the command line names (see ``benchmark.plugins``); return argv for the parser.

    A ``file.py:Class`` or ``module:Class`` typed after ``--defense``/``--model``
    (or as a ``defense=...`` override) may be imported; ``--allow-code`` allows
    any target, including one named inside a config, grid, track or run directory.
    """
    from rfbench.core.plugins import allow_code, reset_allowed_code

    reset_allowed_code()  # each command starts with no permission
    head = argv[: argv.index("--")] if "--" in argv else argv
    named = []
    for i, tok in enumerate(head):
        if tok in _CODE_FLAGS and i + 1 < len(head):
            named.append(head[i + 1])
        for flag in _CODE_FLAGS:
            if tok.startswith(flag + "="):
                named.append(tok[len(flag) + 1:])
        for key in _CODE_OVERRIDES:
            if tok.startswith(key):
                named.append(tok[len(key):])
    allow_code([t for t in named if ":" in t])
    if "--allow-code" in head:
        allow_code(everything=True)
        command = next((t for t in head if t in SUBCOMMANDS), None)
        if command not in _OWN_ALLOW_CODE:
            argv = [t for i, t in enumerate(argv) if not (t == "--allow-code" and i < len(head))]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _code_permissions(list(sys.argv[1:] if argv is None else argv))
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
