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


#: flags and overrides whose value, typed by the user, names code that may be imported
_CODE_FLAGS = ("--defense", "--model")
_CODE_OVERRIDES = ("defense=", "model=")


def command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that parses the command ``argv`` names (``rfbench leaderboard check`` -> its parser)."""
    tokens = iter(argv)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return parser
        nxt = next((t for t in tokens if t in subs[0].choices), None)
        if nxt is None:
            return parser
        parser = subs[0].choices[nxt]


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``--flag`` a parser accepts."""
    return {o for a in parser._actions for o in a.option_strings}


def add_allow_code(parser: argparse.ArgumentParser, what: str) -> None:
    """``--allow-code`` for a command that may meet ``file.py:Class`` / ``module:Class`` in ``what`` (its files)."""
    parser.add_argument("--allow-code", action="store_true",
                        help=f"allow a file.py:Class or module:Class named in {what} to run (it EXECUTES that code; "
                             "code typed after --defense/--model on this command line is allowed without it)")


def _code_permissions(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Record which code the command line names (see ``rfbench.core.plugins``); return argv for the parser.

    A ``file.py:Class`` or ``module:Class`` typed after ``--defense``/``--model``
    (or as a ``defense=...`` override) may be imported; ``--allow-code`` (on the
    commands that define it) allows any target, including one named inside a
    config, grid, track or run directory.
    """
    from rfbench.core.plugins import allow_code, reset_allowed_code

    head = argv[: argv.index("--")] if "--" in argv else argv
    flags = option_strings(command_parser(parser, head))
    reset_allowed_code([f for f in _CODE_FLAGS if f in flags])  # each command starts with no permission
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
    if "--allow-code" in head and "--allow-code" in flags:
        allow_code(everything=True)
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _code_permissions(list(sys.argv[1:] if argv is None else argv), parser)
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
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        from rfbench.benchmark.eval.harness import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        print(f"rfbench: error: {out_of_memory_line(exc, args)}", file=sys.stderr)
        return 2


def out_of_memory_line(exc: BaseException, args: argparse.Namespace) -> str:
    """One line for an out-of-memory error that no halving absorbed: what ran out, and the flag to lower."""
    from rfbench.benchmark.eval.harness import out_of_memory_text

    first = out_of_memory_text(exc)
    size = getattr(args, "batch_size", None)
    flag = f"lower --batch-size (now {size})" if size is not None else "lower --batch-size"
    return f"out of memory ({first}); {flag}, or free memory on the device"


if __name__ == "__main__":
    sys.exit(main())
