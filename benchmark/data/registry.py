"""The dataset registry and :func:`load_dataset`.

A dataset source is registered with ``@register_dataset(name)`` (or
``@register_path_scheme(scheme)`` for ``scheme:PATH`` sources) and returns a
:class:`RawSplits` (the full training and test sets plus its augmentation,
threat-model defaults and normalisation).  :func:`load_dataset` turns that
into a :class:`~rfbench.benchmark.data.base.DataBundle`: it applies the long-tailed
generator when asked (``cifar10-lt`` or ``imbalance_ratio=``), and holds out
a balanced validation split as the protocol says (see
:mod:`rfbench.benchmark.data.longtail`).

Names:

* ``cifar10``, ``cifar100``, ``svhn``, ``stl10`` (:mod:`~rfbench.benchmark.data.torchvision_sets`),
  ``mnist``, ``fashion-mnist`` (:mod:`~rfbench.benchmark.data.idx`);
* ``NAME-lt`` for any of them (the imbalance ratio ρ defaults to 50);
* ``imagefolder:PATH`` and ``imagenet:PATH`` (:mod:`~rfbench.benchmark.data.imagefolder`);
  give these a long tail with ``imbalance_ratio=``;
* ``tiny-imagenet-lt:PATH``, ``tiny-imagenet-lt20:PATH`` (long-tailed by default, rho = 10) and
  ``imagenet-lt:PATH`` (the ImageNet-LT split lists) (:mod:`~rfbench.benchmark.data.imagenet_lt`).

Example::

    bundle = load_dataset("cifar10-lt", root="data", imbalance_ratio=100)
    bundle.train_counts   # [4900, 2997, 1796, ...]: the head's 100 validation images left training
    bundle.notes          # what a result file must say about the splits
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from rfbench.benchmark.data.augment import AugmentConfig
from rfbench.benchmark.data.base import ArrayDataset, DataBundle
from rfbench.benchmark.data.longtail import VAL_BORROW_MODES, balanced_validation, longtail_indices
from rfbench.core.errors import ConfigError, DataNotFoundError
from rfbench.core.registry import Registry
from rfbench.core.threat import ThreatDefaults


@dataclass
class RawSplits:
    """What a dataset source returns: full train and test sets and its defaults."""

    train: ArrayDataset
    test: ArrayDataset
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    threat: ThreatDefaults = field(default_factory=ThreatDefaults)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    notes: list[str] = field(default_factory=list)
    val: ArrayDataset | None = None  # a source's own validation split (ImageNet-LT's list), used as given
    default_imbalance_ratio: float | None = None  # a long-tailed source's rho when none is given (tiny-imagenet-lt)


@dataclass
class DataOptions:
    """How to fetch a dataset: local root, whether torchvision may download, and whether to read only the test split.

    With ``test_only`` a source leaves its training split unread (marked unavailable
    with :data:`TEST_ONLY_REASON`); a source whose normalisation is measured on the
    training images then measures it on the test images and says so in ``notes``.
    """

    root: str | None = None
    download: bool = False
    test_only: bool = False


TEST_ONLY_REASON = "the training split was not loaded (test_only: an evaluation reads only the test split)"


def not_loaded(test: ArrayDataset) -> ArrayDataset:
    """The empty, unavailable training split of a ``test_only`` load (same classes and image shape as ``test``)."""
    return ArrayDataset.missing(test.classes, tuple(test.x.shape[1:]), TEST_ONLY_REASON)


DATASETS: Registry[Callable[[DataOptions], RawSplits]] = Registry("dataset")
register_dataset = DATASETS.register
PATH_SCHEMES: dict[str, Callable[[str, DataOptions], RawSplits]] = {}
PATH_SCHEME_HELP: dict[str, str] = {}

LT_SUFFIX = "-lt"
DEFAULT_IMBALANCE_RATIO = 50.0
#: Where ``download=True`` puts files when no root is given (relative to the working directory).
DEFAULT_DOWNLOAD_ROOT = "data"


def register_path_scheme(scheme: str) -> Callable[[Callable[[str, DataOptions], RawSplits]], Callable[[str, DataOptions], RawSplits]]:
    """Decorator registering a ``scheme:PATH`` dataset source (``f(path, opts) -> RawSplits``)."""

    def deco(fn: Callable[[str, DataOptions], RawSplits]) -> Callable[[str, DataOptions], RawSplits]:
        if scheme in PATH_SCHEMES and PATH_SCHEMES[scheme] is not fn:
            raise ValueError(f"dataset scheme '{scheme}:' is already registered")
        PATH_SCHEMES[scheme] = fn
        PATH_SCHEME_HELP[scheme] = ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        return fn

    return deco


def describe_dataset(name: str) -> str:
    """One-line description of a name from :func:`list_datasets` (``NAME-lt`` and ``scheme:PATH`` included)."""
    if name.endswith(":PATH") and name[: -len(":PATH")] in PATH_SCHEMES:
        return PATH_SCHEME_HELP[name[: -len(":PATH")]]
    base, is_lt = parse_dataset_name(name)
    desc = DATASETS.describe(base)
    return f"long-tailed {base} (reference generator, rho={DEFAULT_IMBALANCE_RATIO:g} unless --imbalance-ratio)" if is_lt else desc


def list_datasets() -> list[str]:
    """Registered dataset names, their ``-lt`` variants and the path schemes."""
    base = DATASETS.names()
    return base + [n + LT_SUFFIX for n in base] + [f"{s}:PATH" for s in sorted(PATH_SCHEMES)]


def parse_dataset_name(name: str) -> tuple[str, bool]:
    """Split ``cifar10-lt`` into ``("cifar10", True)``; path schemes pass through."""
    if ":" in name:
        return name, False
    if name.endswith(LT_SUFFIX) and name[: -len(LT_SUFFIX)] in DATASETS:
        return name[: -len(LT_SUFFIX)], True
    return name, False


def load_raw(name: str, opts: DataOptions | None = None) -> RawSplits:
    """Load the full splits of a base dataset name or ``scheme:PATH``."""
    opts = opts or DataOptions()
    if ":" in name:
        scheme, path = name.split(":", 1)
        if scheme not in PATH_SCHEMES:
            raise ConfigError(f"unknown dataset scheme '{scheme}:'; valid: {', '.join(s + ':PATH' for s in sorted(PATH_SCHEMES))}")
        return PATH_SCHEMES[scheme](path, opts)
    return DATASETS.get(name)(opts)


def validation_size(counts: list[int], fraction: float, minimum: int, budget: int | None = None) -> int:
    """Images per class in the balanced validation split: ``max(minimum, round(fraction·n_max))``.

    ``counts`` are the full training set's class sizes; for a balanced dataset
    this is the protocol's "2% of each class, at least 20".  With ``budget`` (a
    run's ``max_train_samples``) smaller than the training set, ``n_max`` is the
    largest class of a stratified subset of ``budget`` images, so a quick run does
    not validate on more images than it trains on (Fashion-MNIST with 1,000
    training images: 20 per class, not 120).
    """
    n_max = max(counts)
    if budget is not None and 0 < budget < sum(counts):
        n_max = n_max * budget / sum(counts)
    return max(minimum, int(round(fraction * n_max)))


def load_dataset(
    name: str,
    *,
    root: str | None = None,
    download: bool = False,
    imbalance_ratio: float | None = None,
    val_fraction: float = 0.02,
    val_min: int = 20,
    val_per_class: int | None = None,
    seed: int = 0,
    val_borrow: str = "remove",
    test_only: bool = False,
    train_budget: int | None = None,
) -> DataBundle:
    """Load ``name`` as a :class:`DataBundle` with train, balanced validation and test splits.

    ``imbalance_ratio`` (ρ) makes a long-tailed training set with the reference
    generator (:func:`~rfbench.benchmark.data.longtail.longtail_indices`); a ``-lt``
    name implies ρ = 50 unless given.  The validation split holds
    ``val_per_class`` images of every class (default: 2% of the largest
    class, at least ``val_min``; with ``train_budget``, the run's ``max_train_samples``,
    of the largest class of a subset that size: :func:`validation_size`), drawn with ``seed``; ``val_borrow`` says
    whether validation images a long-tailed class had to take from its own
    selected images leave training (``"remove"``) or stay in it
    (``"share"``); see :func:`~rfbench.benchmark.data.longtail.balanced_validation`.
    A balanced dataset always holds its validation images out of training.
    Everything a result file must say about the splits is in ``bundle.notes``.
    ``test_only`` reads only the test split (``rfbench eval`` uses it): the training
    and validation splits are marked unavailable and ``bundle.eval_only`` is true.
    """
    base, is_lt = parse_dataset_name(name)
    if imbalance_ratio is not None and imbalance_ratio < 1:
        raise ConfigError(f"imbalance_ratio: expected a number >= 1, got {imbalance_ratio}")
    if val_borrow not in VAL_BORROW_MODES:
        raise ConfigError(f"val_borrow: expected one of {', '.join(VAL_BORROW_MODES)}, got '{val_borrow}'")
    if val_per_class is not None and val_per_class < 0:
        raise ConfigError(f"val_per_class: expected a number >= 0, got {val_per_class}")
    if is_lt and imbalance_ratio is None:
        imbalance_ratio = DEFAULT_IMBALANCE_RATIO
    raw = load_raw(base, DataOptions(root=root, download=download, test_only=test_only))
    if raw.default_imbalance_ratio is not None:  # a long-tailed source (tiny-imagenet-lt:PATH)
        is_lt = True
        imbalance_ratio = raw.default_imbalance_ratio if imbalance_ratio is None else imbalance_ratio
    full_name = name if imbalance_ratio is None or is_lt else f"{name}-lt"
    common = dict(name=full_name, test=raw.test, augment=raw.augment, imbalance_ratio=imbalance_ratio,
                  threat=raw.threat, mean=raw.mean, std=raw.std)
    if raw.train.unavailable is not None:
        if imbalance_ratio is not None and not test_only:
            raise DataNotFoundError(f"a long-tailed split needs training images: {raw.train.unavailable}")
        val = ArrayDataset.missing(raw.test.classes, tuple(raw.test.x.shape[1:]), raw.train.unavailable)
        return DataBundle(train=raw.train, val=val, notes=[f"evaluation only: {raw.train.unavailable}", *raw.notes], **common)
    if raw.val is not None and imbalance_ratio is None:  # the source's own splits (imagenet-lt:PATH)
        return DataBundle(train=raw.train, val=raw.val, notes=list(raw.notes), **common)
    labels = raw.train.y.numpy()
    c = raw.train.num_classes
    notes = []
    if imbalance_ratio is not None:
        selected, counts = longtail_indices(labels, c, imbalance_ratio)
        notes.append(
            f"long-tailed training set: reference generator (np.random.seed(0)), rho={imbalance_ratio:g}, "
            f"per-class counts {counts}"
        )
    else:
        selected = np.arange(len(labels))
    per_class = val_per_class if val_per_class is not None else validation_size(raw.train.counts(), val_fraction, val_min,
                                                                                     train_budget)
    train_pos, val_pos, val_notes = balanced_validation(
        labels, selected, c, per_class, seed=seed, borrow=val_borrow if imbalance_ratio is not None else "remove"
    )
    if imbalance_ratio is None:
        notes.append(f"balanced validation split: {per_class} training images per class held out (seed {seed})")
    else:
        notes.append(f"balanced validation split: {per_class} images per class (seed {seed}, val_borrow={val_borrow})")
        notes += val_notes
    # both splits are kept sorted by position in the original training set
    return DataBundle(
        train=raw.train.subset(torch.from_numpy(np.sort(train_pos))),
        val=raw.train.subset(torch.from_numpy(np.sort(val_pos))),
        notes=notes,
        **common,
    )
