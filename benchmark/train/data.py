"""A training run's data: the dataset, its long-tailed and validation splits, an optional training subset.

``rfbench train`` and ``rfbench calibrate`` (which needs the run's own validation split) both load it here.
"""

from __future__ import annotations

import dataclasses

import torch

from rfbench.benchmark.data import DataBundle, load_dataset
from rfbench.benchmark.data.subsets import stratified_subset
from rfbench.benchmark.train.config import TrainConfig
from rfbench.core.errors import ConfigError
from rfbench.core.threat import Threat, resolve_threat


def load_bundle(cfg: TrainConfig) -> DataBundle:
    """The run's data: dataset, long-tail split, validation split, optional training subset."""
    bundle = load_dataset(cfg.dataset, root=cfg.data_root, download=cfg.download, imbalance_ratio=cfg.imbalance_ratio,
                          val_per_class=cfg.val_per_class, seed=cfg.seed, val_borrow=cfg.val_borrow,
                          train_budget=cfg.max_train_samples)
    if bundle.eval_only:
        raise ConfigError(f"dataset '{cfg.dataset}' has no training split here; it can only be evaluated")
    if cfg.augment != "none":
        bundle.augment = dataclasses.replace(bundle.augment, policy=cfg.augment, num_ops=cfg.augment_ops,
                                             magnitude=cfg.augment_magnitude, autoaugment_policy=cfg.augment_policy)
        bundle.notes.append(f"augmentation: {cfg.augment} before the dataset's crop/flip")
    if cfg.max_train_samples:
        present = sum(1 for n in bundle.train.counts() if n)
        if cfg.max_train_samples < present:
            raise ConfigError(f"max_train_samples={cfg.max_train_samples} is fewer than the {present} classes with "
                              f"training images; every class keeps at least one image, so give at least {present}")
        bundle.train = stratified_subset(bundle.train, cfg.max_train_samples, seed=cfg.seed)
        bundle.notes.append(f"training subset: {len(bundle.train)} images (max_train_samples={cfg.max_train_samples})")
    return bundle


def images_on_device(ds, device: torch.device):
    """``ds`` with its uint8 images moved to ``device``; labels and positions stay on the CPU.

    Batches are then gathered on the device (``iterate_batches`` indexes the
    images there); labels stay where the defenses' samplers and the
    per-class counts expect them.
    """
    return dataclasses.replace(ds, x=ds.x.to(device))


def threat_from(cfg: TrainConfig, bundle: DataBundle) -> Threat:
    """The training threat: the dataset's protocol values, then the config's (track/file, then CLI) values.

    The one resolution rule, :func:`rfbench.core.threat.resolve_threat`.
    """
    return resolve_threat(bundle.threat, "train", norm=cfg.norm, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps)


