"""``rfbench zoo``: per-class robustness of a list of external models (RobustBench's zoo or local), ranked by the worst class."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfbench.core.errors import ConfigError

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
  rfbench zoo zoo.yaml --out /shared/zoo --shards 8 --executor ray --ray-address auto   (8 Ray tasks, then the table)
  rfbench zoo zoo.yaml --track robustbench-cifar10-linf --out runs/zoo   (a track of kind external's evaluation), then
    rfbench leaderboard submit runs/zoo/<model> --track robustbench-cifar10-linf   (one checked entry per model)

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
    from rfbench.benchmark.cli.sharding import rank_device, run_ray_shards, shard_of
    from rfbench.benchmark.data import load_dataset
    from rfbench.benchmark.eval import EvalConfig, evaluate
    from rfbench.benchmark.eval.models import robustbench_dataset
    from rfbench.benchmark.eval.shard import ShardsIncomplete
    from rfbench.benchmark.leaderboard.external import ZOO_MODEL_FILE, track_dataset, track_eval_config
    from rfbench.benchmark.runner.zoo import load_zoo, published_from_model_info, write_board, zoo_markdown, zoo_row
    from rfbench.benchmark.train.runtime import resolve_device
    from rfbench.core.io import atomic_write_json
    from rfbench.core.io.lock import exclusive_dir
    from rfbench.core.threat import NORM_NAMES

    zoo = load_zoo(args.file)
    shard = shard_of(args)
    if args.executor == "ray" and shard is None:
        run_ray_shards(args, Path(args.out), _shard_task, PATH_ARGS, "zoo")
        args.merge = True
        shard = shard_of(args)
    device = resolve_device(args.device)
    if (on_rank := rank_device(device, shard)) is not None:
        device = resolve_device(on_rank)
    track = _track(args, zoo)
    if track is not None:  # the track's evaluation, exactly (its entries are checked against it)
        data_root = args.data_root or (track.run.train or {}).get("data_root")
        bundle = load_dataset(track_dataset(track), root=data_root, download=args.download, test_only=True)
        norm = track.info.protocol.norm
        cfg = track_eval_config(track, str(device), quiet=args.quiet)
    else:
        bundle = load_dataset(zoo.dataset, root=args.data_root, download=args.download, test_only=True)
        norm = (zoo.norm or (bundle.threat.norm if bundle.threat is not None else "linf")).lower()
        cfg = EvalConfig(attacks=list(zoo.attacks), eps=zoo.eps, norm=zoo.norm, n_per_class=zoo.n_per_class,
                         batch_size=zoo.batch_size, device=str(device), seed=zoo.seed, quiet=args.quiet)
    out = Path(args.out)
    rows, pending = [], []
    for m in zoo.models:
        model, source = _load(m, bundle, norm, args)
        where = out / m.slug
        published = m.published_autoattack
        if published is None and m.robustbench and args.model_info:
            published = published_from_model_info(Path(args.model_info), robustbench_dataset(bundle.name),
                                                   NORM_NAMES[norm], m.robustbench)
        where.mkdir(parents=True, exist_ok=True)  # what `rfbench leaderboard submit` reads beside the result
        atomic_write_json(where / ZOO_MODEL_FILE, {"name": m.label, "published_autoattack": published,
                                                   "track": track.id if track is not None else None})
        locked = shard.directory(where) if shard is not None and not shard.merging else where
        try:
            with exclusive_dir(locked, "evaluation directory"):
                result = evaluate(model, bundle, cfg, where, source=source, shard=shard)
        except ShardsIncomplete:
            if shard is None or shard.merging:
                raise
            pending.append(m.label)
            continue
        rows.append(zoo_row(m, result, published))
    if pending:
        print(f"{shard.name if shard else ''} finished; other shards still run for {', '.join(pending)}: the last "
              "shard to finish writes the zoo table", file=sys.stderr)
        return 0
    ranked = write_board(out, zoo, rows)
    print(zoo_markdown(ranked, zoo))
    print(f"zoo table in {out}/zoo.md and {out}/zoo.json; per-model results in {out}/<model>/", file=sys.stderr)
    if track is not None:
        print(f"leaderboard entries: rfbench leaderboard submit {out}/<model> --track {track.id}", file=sys.stderr)
    return 0


#: zoo-file keys that a track fixes (``--track``): the zoo file must leave them out
TRACK_FIXED = ("attacks", "eps", "norm", "n_per_class", "batch_size", "seed")


def _track(args: argparse.Namespace, zoo):
    """The external track of ``--track``, checked against the zoo file; None without ``--track``."""
    if not args.track:
        return None
    from rfbench.benchmark.leaderboard.external import is_external, track_dataset
    from rfbench.benchmark.leaderboard.schema import find_track, leaderboards_root
    from rfbench.core.config import load_yaml

    track = find_track(args.track, leaderboards_root(args.root))
    if not is_external(track):
        raise ConfigError(f"--track {track.id} trains its entries (rfbench run); models evaluated as given go to a "
                          "track with 'kind: external' (see docs/evaluation.md)")
    given = [k for k in TRACK_FIXED if k in load_yaml(args.file)]
    if given:
        raise ConfigError(f"{args.file}: with --track {track.id} the evaluation is the track's; remove "
                          f"{', '.join(given)} from the zoo file")
    if zoo.dataset != track_dataset(track):
        raise ConfigError(f"{args.file}: dataset is {zoo.dataset!r} but track {track.id} evaluates on "
                          f"{track_dataset(track)!r}")
    return track


#: the arguments holding paths (made absolute for Ray tasks on other nodes)
PATH_ARGS = ("file", "out", "robustbench_dir", "model_info", "data_root", "root")


def _shard_task(args: argparse.Namespace, k: int, n: int) -> str:
    """One Ray task of ``--shards N --executor ray``: shard ``k`` of ``n`` of every model (the driver merges)."""
    run(argparse.Namespace(**{**vars(args), "shard": f"{k}/{n}", "executor": "local", "merge": False}))
    return f"shard-{k}-of-{n}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter
    from rfbench.benchmark.cli.sharding import add_shard_arguments

    p = sub.add_parser("zoo", help="per-class robustness of a list of external models, ranked by the worst class",
                       description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("file", metavar="ZOO.yaml", help="the zoo file (dataset, attacks, models)")
    p.add_argument("--out", default="runs/zoo", metavar="DIR", help="output directory [default: runs/zoo]")
    p.add_argument("--robustbench-dir", default="models", metavar="DIR",
                   help="robustbench's model directory (DIR/<dataset>/<Linf|L2>/<Name>.pt; present files need no network)")
    p.add_argument("--model-info", metavar="DIR", help="RobustBench's model_info directory (from its repository) for "
                   "the published AutoAttack accuracy of models without published_autoattack")
    p.add_argument("--track", metavar="ID", help="evaluate with the evaluation of this external track (kind: external; "
                   "the zoo file then gives the dataset and the models only), so that each model can be submitted "
                   "to it: rfbench leaderboard submit OUT/<model> --track ID")
    p.add_argument("--root", metavar="DIR", help="the directory holding leaderboards/ for --track [default: the "
                   "current directory if it has one, else this checkout]")
    p.add_argument("--data-root", metavar="DIR", help="directory holding the dataset files")
    p.add_argument("--download", action="store_true", help="let torchvision download missing files")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [default: auto]")
    p.add_argument("--quiet", action="store_true", help="no progress bar or info messages")
    add_shard_arguments(p, "every model", "each model's result.json and the zoo table")
    p.set_defaults(func=run)
