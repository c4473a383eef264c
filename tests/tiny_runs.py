"""Tiny run configs for the runner, sweep, leaderboard and reproduce tests.

The real ``fashion-mnist-linf`` track shrunk to seconds: a quarter-width
CNN3, 16 Adam steps (one epoch of 1024 images, no lr warm-up) of PGD-2 training, enough for the model to
beat chance (the evaluation's prediction check fails a dead model), and FGSM + PGD-2 on
5 test images per class.  The numbers are meaningless; the code path is the
real one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TRACK = REPO / "leaderboards" / "fashion-mnist-linf" / "track.yaml"

TINY_TRAIN = {"max_train_samples": 1024, "epochs": 1, "batch_size": 64, "steps": 2, "val_per_class": 5, "val_steps": 1,
              "model_kwargs": {"width": 0.25}, "device": "cpu", "optimizer": "adam", "lr": 0.01, "schedule": "constant",
              "milestone_fractions": [], "lr_warmup_iters": 0}
TINY_EVAL = {"attacks": ["fgsm", "pgd:steps=2"], "n_per_class": 5, "batch_size": 100, "plot": False,
             "device": "cpu"}
TINY_LABELS = ["fgsm", "pgd-2"]


def tiny_track_data(checkpoints: tuple[str, ...] = ("best", "last")) -> dict:
    """The fashion-mnist-linf track as data, shrunk (protocol updated to match)."""
    data = yaml.safe_load(TRACK.read_text())
    data = copy.deepcopy(data)
    data["train"].update(TINY_TRAIN)
    data["eval"] = dict(TINY_EVAL)
    data["checkpoints"] = list(checkpoints)
    data["track"]["protocol"].update(attacks=list(TINY_LABELS), n_per_class=5, test_size=50)
    data["track"]["fixed_train"] = ["dataset", "model", "eps", "epochs", "max_train_samples"]
    return data


def write_tiny_track(root: Path, checkpoints: tuple[str, ...] = ("best", "last")) -> Path:
    """``root/leaderboards/fashion-mnist-linf/track.yaml`` holding the tiny track; returns its path."""
    path = root / "leaderboards" / "fashion-mnist-linf" / "track.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tiny_track_data(checkpoints), sort_keys=False))
    return path
