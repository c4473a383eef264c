"""``rfbench data describe DATASET``: per-class counts of a dataset's splits, and its split indices.

Prints the number of images of every class in the training, validation and
test splits exactly as ``rfbench train`` would build them (long-tailed
generator, balanced validation split), plus the notes a result file records.
``--save-indices FILE.json`` writes ``{"train": [...], "val": [...]}``: the
positions, in the original (full) training set, of the images in each split,
so anyone can audit or reuse a split.
"""

from __future__ import annotations

import argparse

from tabulate import tabulate

from rfbench.core.io.atomic import atomic_write_json

DESCRIBE_EPILOG = """\
examples:
  rfbench data describe fashion-mnist
  rfbench data describe cifar10-lt --imbalance-ratio 100 --data-root data --save-indices cifar10-lt-100.json
  rfbench data describe imagefolder:/data/cifar10-jpeg --imbalance-ratio 10
"""


def describe(args: argparse.Namespace) -> int:
    from rfbench.benchmark.data import load_dataset

    bundle = load_dataset(
        args.dataset,
        root=getattr(args, "data_root", None),
        download=args.download,
        imbalance_ratio=getattr(args, "imbalance_ratio", None),
        val_per_class=getattr(args, "val_per_class", None),
        seed=args.seed,
        val_borrow=args.val_borrow,
    )
    splits = {"train": bundle.train, "val": bundle.val, "test": bundle.test}
    counts = {k: ds.counts() for k, ds in splits.items()}
    rows = [[c, name] + [counts[k][c] for k in splits] for c, name in enumerate(bundle.classes)]
    rows.append(["", "total"] + [sum(counts[k]) for k in splits])
    rho = f", imbalance ratio rho = {bundle.imbalance_ratio:g}" if bundle.imbalance_ratio is not None else ""
    print(f"{bundle.name}: {bundle.num_classes} classes, images {bundle.in_channels}x{bundle.image_size[0]}x{bundle.image_size[1]}{rho}")
    print(tabulate(rows, headers=["label", "class", "train", "val", "test"], tablefmt="github"))
    for note in bundle.notes:
        print(f"note: {note}")
    save = getattr(args, "save_indices", None)
    if save:
        atomic_write_json(save, {"train": bundle.train.index.tolist(), "val": bundle.val.index.tolist()}, indent=None)
        print(f"saved train/val positions in the original training set to {save}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter

    p = sub.add_parser(
        "data",
        help="inspect datasets and their splits",
        description="Inspect a dataset's splits. `rfbench data describe DATASET --help` for the options.",
        formatter_class=HelpFormatter,
    )
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    d = data_sub.add_parser(
        "describe",
        help="per-class counts of the train, validation and test splits",
        description=__doc__,
        epilog=DESCRIBE_EPILOG,
        formatter_class=HelpFormatter,
    )
    d.add_argument("dataset", metavar="DATASET",
                   help="a name from `rfbench list datasets`: NAME, NAME-lt (rho 50 unless --imbalance-ratio), "
                        "imagefolder:PATH or imagenet:PATH")
    d.add_argument("--imbalance-ratio", type=float, default=argparse.SUPPRESS, metavar="R",
                   help="make the training set long-tailed with the reference generator; R is rho, the head-to-tail "
                        "ratio n_0/n_(C-1): 50 means the tail class has 1/50 of the head class's images "
                        "(default: none, or 50 for a NAME-lt dataset)")
    d.add_argument("--data-root", default=argparse.SUPPRESS, metavar="DIR",
                   help="directory holding the dataset files (default: the dataset's usual places, e.g. "
                        "/usr/share/datasets/fashion-mnist, or ./data)")
    d.add_argument("--download", action="store_true", help="let torchvision download missing files into --data-root")
    d.add_argument("--val-per-class", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="validation images per class (default: 2%% of the largest class, at least 20)")
    d.add_argument("--val-borrow", choices=["remove", "share"], default="remove",
                   help="long-tailed sets: validation images a class must take from its own selected training "
                        "images (the head has no others) are removed from training, or shared with it")
    d.add_argument("--seed", type=int, default=0, help="seed of the validation split draw")
    d.add_argument("--save-indices", default=argparse.SUPPRESS, metavar="FILE.json",
                   help='write {"train": [...], "val": [...]}, the positions of each split\'s images in the original '
                        "training set (default: not saved)")
    d.set_defaults(func=describe)
