"""A run with an augmentation policy (RandAugment / AutoAugment) resumes bit-identically and really augments."""

from __future__ import annotations

import torch

from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.data import load_bundle
from rfbench.benchmark.train.trainer import train
from rfbench.core.io import load_checkpoint

TINY = dict(dataset="fashion-mnist", model="smallcnn", max_train_samples=192, val_per_class=5, steps=1,
            val_steps=1, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=0.0, device="cpu", seed=3,
            augment="randaugment", augment_ops=2, augment_magnitude=8)


def _cfg(tmp_path, name, **kw):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def _model(run):
    return load_checkpoint(run / "checkpoint-last.pt")["model"]


def test_policy_reaches_the_bundle():
    b = load_bundle(TrainConfig(**{**TINY, "augment": "autoaugment", "augment_policy": "svhn"}))
    assert b.augment.policy == "autoaugment" and b.augment.autoaugment_policy == "svhn"
    assert any("autoaugment" in n for n in b.notes)


def test_randaugment_run_resumes_bit_identically_and_differs_from_no_policy(tmp_path):
    straight = train(_cfg(tmp_path, "straight", epochs=2), quiet=True)
    train(_cfg(tmp_path, "resumed", epochs=1), quiet=True)
    resumed = train(_cfg(tmp_path, "resumed", epochs=2), quiet=True)
    a, b = _model(straight), _model(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = _model(train(_cfg(tmp_path, "plain", epochs=2, augment="none"), quiet=True))
    assert not all(torch.equal(a[k], plain[k]) for k in a)
