"""``rfbench train``: adversarially train a model with a defense, resumably."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from rfbench.benchmark.cli.config_args import add_config_flags, resolve_config
from rfbench.benchmark.train.config import TrainConfig

log = logging.getLogger(__name__)

HELP = {
    "dataset": "dataset name (`rfbench list datasets`): fashion-mnist, cifar10, cifar10-lt, imagefolder:PATH, ...",
    "data_root": "directory holding the dataset files (default: the dataset's usual places)",
    "download": "let torchvision download missing files",
    "imbalance_ratio": "long-tail ratio rho = head/tail count (50: the tail class has 1/50 of the head's images)",
    "val_per_class": "validation images held out per class (default: 2%% of the largest class, at least 20; with "
                     "--max-train-samples, 2%% of the largest class of a subset that size)",
    "val_borrow": "long-tailed sets: validation images borrowed from the head class are removed from training, "
                  "or shared with it",
    "eps_warmup_epochs": "ramp the training eps linearly over this many epochs (default: the dataset's protocol; "
                         "SVHN uses 5)",
    "max_train_samples": "train on a stratified subset of this many images (quick runs)",
    "augment": "augmentation policy applied per image before the dataset's crop/flip: randaugment or autoaugment "
               "(torchvision v2 on uint8, AT-BSL's RA/AuA); none = crop/flip only",
    "augment_ops": "RandAugment: operations per image (AT-BSL: 2)",
    "augment_magnitude": "RandAugment: magnitude, 0-30 (AT-BSL: 8; torchvision's default 9)",
    "augment_policy": "AutoAugment: the learned policy (cifar10, imagenet, svhn)",
    "model": "model name (`rfbench list models`)",
    "init": "checkpoint to initialise the weights from (e.g. runs/trades/checkpoint-best.pt for FRL)",
    "defense": "defense name (`rfbench list defenses`), an installed plugin, or module:Class / file.py:Class "
               "(a file is executed: only name code you trust); rfbench's own inventions, not from a paper: class-weights, "
               "and reat with rbl=logit-adjusted",
    "norm": "training attack norm (default: the dataset's protocol)",
    "eps": "training attack radius, e.g. 8/255 (default: the dataset's protocol)",
    "alpha": "training attack step size (default: eps times the protocol's alpha/eps ratio, i.e. the protocol's step at its eps)",
    "steps": "training attack steps (default: the dataset's protocol)",
    "epochs": "number of epochs",
    "batch_size": "training batch size",
    "optimizer": "optimiser",
    "lr": "initial learning rate",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "weight decay",
    "schedule": "learning-rate schedule",
    "milestones": "epochs at which a multistep schedule multiplies the lr by gamma",
    "milestone_fractions": "the multistep milestones as fractions of --epochs, e.g. 0.5,0.75 (used when --milestones "
                           "is empty; 100 epochs at 0.75,0.9 decay at epochs 75 and 90)",
    "awp_gamma": "adversarial weight perturbation (AWP, Wu et al., NeurIPS 2020) around any defense: the relative "
                 "size gamma of the weight perturbation (the papers use 0.005); 0 = off",
    "awp_warmup": "AWP starts after this fraction of the epochs (TRADES-AWP: 9/200 = 0.045; 0 = from the start)",
    "checkpoint_every": "also save a resumable checkpoint every N batches inside an epoch (0 = at epoch ends only)",
    "gamma": "multistep decay factor",
    "lr_warmup_iters": "linear learning-rate warm-up over the first N optimiser steps (0 = off)",
    "val_steps": "PGD steps of the per-epoch validation attack",
    "select": "how checkpoint-best.pt is chosen on validation robust accuracy: mean, worst class, or their sum",
    "seed": "seed for torch, numpy, random, shuffling, augmentation and attack starts",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "mixed precision: auto = bf16 autocast on CUDA, off on CPU",
    "channels_last": "channels-last memory format: auto = on for CUDA, and on CPU with bf16 autocast",
    "compile": "torch.compile the model for training and its attack (the first steps pay the compile time)",
    "nan_policy": "on a NaN/Inf loss: stop with a message, or skip the batch",
    "out": "run directory (a rerun resumes from its checkpoint-last.pt)",
    "logger": "experiment loggers, offline by default: tensorboard (RUN_DIR/tensorboard), mlflow "
              "(sqlite RUN_DIR/mlflow.db, artifacts RUN_DIR/mlruns, or $MLFLOW_TRACKING_URI), "
              "wandb (offline, RUN_DIR/wandb); pip install 'rfbench[NAME]'",
}

EPILOG = """\
examples:
  rfbench train --dataset fashion-mnist --model smallcnn --defense pgd-at --epochs 2 --out runs/demo
  rfbench train --config configs/cifar10-lt50/at-bsl.yaml seed=1 out=runs/bsl-s1
  rfbench train --defense trades defense_args.beta=3 --out runs/trades-b3

A killed run resumes where it stopped when the same command is run again.
Defense hyper-parameters go in `defense_args` (YAML mapping, or key=value overrides
such as defense_args.beta=6); `rfbench list defenses` names the defenses.
"""


def run(args: argparse.Namespace) -> int:
    from rfbench.benchmark.train.trainer import train
    from rfbench.core.io.lock import exclusive_dir
    from rfbench.core.launch import launch_from_env

    launch = launch_from_env()  # a bad WORLD_SIZE / RANK / MASTER_ADDR is one line, before any work
    cfg = resolve_config(TrainConfig, args, args.config, args.overrides)
    # under torchrun every rank runs this command; rank 0 is the run directory's one writer and holds its lock.
    # RANK counts only inside a launch (WORLD_SIZE > 1 with its rendezvous variables); the other ranks write
    # nothing before they have joined rank 0's process group, which needs rank 0 and therefore its lock.
    writer = launch.main
    with exclusive_dir(cfg.out, "run directory") if writer else contextlib.nullcontext():
        out = train(cfg, quiet=args.quiet, force=args.force)
    print(f"run directory: {out}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter, add_allow_code

    p = sub.add_parser("train", help="train a model with a defense", description=__doc__, epilog=EPILOG,
                       formatter_class=HelpFormatter)
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (flags and key=value override it)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="start over even if the run directory holds a checkpoint")
    add_allow_code(p, "--config or a resumed run directory")
    add_config_flags(p, TrainConfig, HELP)
    p.set_defaults(func=run)
