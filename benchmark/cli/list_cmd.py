"""``rfbench list {datasets,models,defenses,attacks}``."""

from __future__ import annotations

import argparse


def _names(kind: str) -> list[tuple[str, str]]:
    if kind == "datasets":
        from rfbench.benchmark.data import list_datasets
        from rfbench.benchmark.data.registry import describe_dataset

        return [(n, describe_dataset(n)) for n in list_datasets()]
    if kind == "models":
        from rfbench.models import MODELS

        return [(n, MODELS.describe(n)) for n in MODELS.names()]
    if kind == "defenses":
        from rfbench.defenses import DEFENSES, list_defenses

        return [(n, DEFENSES.describe(n) if n in DEFENSES else "(entry point)") for n in list_defenses()]
    from rfbench.attacks.registry import ATTACKS

    return [(n, ATTACKS.describe(n)) for n in ATTACKS.names()]


def run(args: argparse.Namespace) -> int:
    rows = _names(args.kind)
    width = max((len(n) for n, _ in rows), default=0)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}".rstrip())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter

    p = sub.add_parser(
        "list",
        help="list registered datasets, models, defenses or attacks",
        description="List the registered plugins of one kind, with a one-line description of each.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("kind", choices=["datasets", "models", "defenses", "attacks"], help="what to list")
    p.set_defaults(func=run)
