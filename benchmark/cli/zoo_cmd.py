"""``rfbench zoo``: per-class robustness of a list of external models (RobustBench's zoo or local), ranked by the worst class."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
A zoo file lists the models (see docs/evaluation.md, "A per-class view of the zoo"):
  dataset: cifar10
  attacks: ["autoattack:version=standard"]
  models:
    - robustbench: Carmon2019Unlabeled
      published_autoattack: 0.5953
    - robustbench: Wong2020Fast

examples:
  rfbench zoo zoo.yaml --out runs/zoo                       (downloads into --robustbench-dir, default models/)
  git clone --depth 1 https://github.com/RobustBench/robustbench rb && rfbench zoo zoo.yaml --model-info rb/model_info
  torchrun --standalone --nproc-per-node 4 -m rfbench zoo zoo.yaml --out runs/zoo     (each model sharded over 4 GPUs)

Every model is evaluated into OUT/<name>/ (resumable); OUT/zoo.md and OUT/zoo.json rank them by
worst-class robust accuracy, with RobustBench's published AutoAttack accuracy beside rfbench's mean.
"""


def _load(m, bundle, norm: str, args: argparse.Namespace):
    from rfbench.benchmark.eval import models as M

    if m.robustbench:
        return M.from_robustbench(m.robustbench, bundle.name, norm, args.robustbench_dir)
    shape = {"num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "mean": bundle.mean, "std": bundle.std}
    weights = str(Path(args.file).parent / m.weights) if m.weights and not Path(m.weights).is_absolute() else m.weights
    return M.from_registry(m.model, weights, model_args=m.model_args, **shape)


def run(args: argparse.Namespace) -> int:
    from rfbench.benchmark.cli.eval_cmd import _device_of, _shard_of
    from rfbench.benchmark.data import load_dataset
    from rfbench.benchmark.eval import EvalConfig, evaluate
    from rfbench.benchmark.eval.models import robustbench_dataset
    from rfbench.benchmark.eval.shard import ShardsIncomplete
    from rfbench.benchmark.runner.zoo import load_zoo, published_from_model_info, write_board, zoo_markdown, zoo_row
    from rfbench.benchmark.train.runtime import resolve_device
    from rfbench.core.io.lock import exclusive_dir
    from rfbench.core.threat import NORM_NAMES

    zoo = load_zoo(args.file)
    shard = _shard_of(args)
    device = resolve_device(args.device)
    if (rank_device := _device_of(device, shard)) is not None:
        device = resolve_device(rank_device)
    bundle = load_dataset(zoo.dataset, root=args.data_root, download=args.download, test_only=True)
    norm = (zoo.norm or (bundle.threat.norm if bundle.threat is not None else "linf")).lower()
    cfg = EvalConfig(attacks=list(zoo.attacks), eps=zoo.eps, norm=zoo.norm, n_per_class=zoo.n_per_class,
                     batch_size=zoo.batch_size, device=str(device), seed=zoo.seed, quiet=args.quiet)
    out = Path(args.out)
    rows, pending = [], []
    for m in zoo.models:
        model, source = _load(m, bundle, norm, args)
        where = out / m.slug
        locked = shard.directory(where) if shard is not None and not shard.merging else where
        try:
            with exclusive_dir(locked, "evaluation directory"):
                result = evaluate(model, bundle, cfg, where, source=source, shard=shard)
        except ShardsIncomplete:
            if shard is None or shard.merging:
                raise
            pending.append(m.label)
            continue
        published = m.published_autoattack
        if published is None and m.robustbench and args.model_info:
            published = published_from_model_info(Path(args.model_info), robustbench_dataset(bundle.name),
                                                   NORM_NAMES[norm], m.robustbench)
        rows.append(zoo_row(m, result, published))
    if pending:
        print(f"{shard.name if shard else ''} finished; other shards still run for {', '.join(pending)}: the last "
              "shard to finish writes the zoo table", file=sys.stderr)
        return 0
    ranked = write_board(out, zoo, rows)
    print(zoo_markdown(ranked, zoo))
    print(f"zoo table in {out}/zoo.md and {out}/zoo.json; per-model results in {out}/<model>/", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter

    p = sub.add_parser("zoo", help="per-class robustness of a list of external models, ranked by the worst class",
                       description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("file", metavar="ZOO.yaml", help="the zoo file (dataset, attacks, models)")
    p.add_argument("--out", default="runs/zoo", metavar="DIR", help="output directory [default: runs/zoo]")
    p.add_argument("--robustbench-dir", default="models", metavar="DIR",
                   help="robustbench's model directory (DIR/<dataset>/<Linf|L2>/<Name>.pt; present files need no network)")
    p.add_argument("--model-info", metavar="DIR", help="RobustBench's model_info directory (from its repository) for "
                   "the published AutoAttack accuracy of models without published_autoattack")
    p.add_argument("--data-root", metavar="DIR", help="directory holding the dataset files")
    p.add_argument("--download", action="store_true", help="let torchvision download missing files")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [default: auto]")
    p.add_argument("--quiet", action="store_true", help="no progress bar or info messages")
    p.add_argument("--shard", metavar="K/N", help="evaluate only shard K of N of every model (as rfbench eval --shard)")
    p.add_argument("--shards", type=int, metavar="N", help="number of shards, for --merge")
    p.add_argument("--merge", action="store_true", help="merge every model's N finished shards and write the table")
    p.set_defaults(func=run)
