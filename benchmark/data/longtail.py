"""The long-tailed split generator used by REAT, RoBal and AT-BSL, and the balanced validation split.

Reproduces the reference generator exactly (``docs/protocol.md``, "Long-tailed split generator";
it is the ``IMBALANCECIFAR10`` generator of Cao et al., "Learning Imbalanced
Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019, which
REAT, RoBal and AT-BSL reuse):

* per-class count ``n_i = int(n_max * r ** (i / (C - 1)))`` with ``r = 1/ρ``
  (class 0 is the head; the class order is the label order).  As in the
  reference code, ``n_max = len(train) / C`` (a float), which is the class
  size of a balanced dataset (5000 for CIFAR-10, 500 for CIFAR-100, 6000 for
  Fashion-MNIST);
* selection: ``np.random.seed(0)``; then for each class in label order, take
  that class's indices in the original training order, ``np.random.shuffle``
  them, and keep the first ``n_i``.

The generator only sees labels, so any dataset (CIFAR, Fashion-MNIST, SVHN,
image folders) gets a long-tailed variant the same way.  On a dataset that is
not balanced to begin with (SVHN), a class with fewer than ``n_i`` images
keeps all of them.  The generator uses a private ``np.random.RandomState(0)``,
which draws the identical stream as the global ``np.random.seed(0)`` without
disturbing the caller's global RNG (``tests/test_data_longtail.py`` checks the
selected indices against the global-RNG formulation).
"""

from __future__ import annotations

import math

import numpy as np

from rfbench.core.errors import ConfigError

#: How :func:`balanced_validation` treats validation images taken from a class's own selected
#: training images (the head class of a long-tailed set has no other images left).
VAL_BORROW_MODES = ("remove", "share")


def longtail_counts(n_max: float, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Per-class training counts ``int(n_max · (1/ρ)^(i/(C-1)))`` for head-to-tail ratio ρ = ``imbalance_ratio``."""
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance ratio must be >= 1, got {imbalance_ratio}")
    if num_classes < 2:
        raise ValueError(f"a long-tailed split needs at least 2 classes, got {num_classes}")
    r = 1.0 / imbalance_ratio
    counts = [int(n_max * r ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    if counts[-1] < 1:
        raise ConfigError(f"imbalance_ratio={imbalance_ratio:g} leaves the last class with no training image (its "
                          f"count is {n_max:g}/{imbalance_ratio:g} < 1); the largest ratio this dataset allows is "
                          f"{math.floor(n_max):d}")
    return counts


def longtail_indices(labels: np.ndarray, num_classes: int, imbalance_ratio: float, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Positions (in the original training order) kept by the reference generator.

    Returns ``(selected, counts)``; ``selected`` lists class 0's picks first,
    then class 1's, and so on, in the order the generator takes them, and
    ``counts`` are the numbers actually kept per class (``n_i``, or fewer for
    a class that has fewer images than ``n_i``).  ``seed`` is the reference's
    ``rand_number`` (0 in every published split).
    """
    labels = np.asarray(labels)
    counts = longtail_counts(len(labels) / num_classes, num_classes, imbalance_ratio)
    rng = np.random.RandomState(seed)
    picks = []
    for c, n_c in enumerate(counts):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        picks.append(idx[:n_c])
    return np.concatenate(picks).astype(np.int64), [len(p) for p in picks]


def balanced_validation(
    labels: np.ndarray,
    selected: np.ndarray,
    num_classes: int,
    per_class: int,
    seed: int = 0,
    borrow: str = "remove",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Hold out ``per_class`` validation images of every class (the protocol's "Checkpoint selection").

    The validation images of class ``c`` come first from the training images
    of ``c`` that are *not* in ``selected`` (for a long-tailed set, the images
    the generator left out), so the training subset stays exactly
    ``selected``.  Where a class has too few left (the head keeps all of its
    images, and a balanced set selects everything), the missing ones are taken
    from that class's own selected images, and a note says so.  ``borrow``
    decides what happens to those borrowed images:

    * ``"remove"`` (default): they leave the training set, so training and
      validation never overlap (the head then trains on ``per_class`` fewer
      images than the reference subset);
    * ``"share"``: they stay in training too, so the training subset is
      exactly the reference subset, at the price of a train/validation
      overlap in those classes.

    The protocol does not say which; both are recorded in the notes.
    Returns ``(train_positions, val_positions, notes)``.
    """
    if borrow not in VAL_BORROW_MODES:
        raise ConfigError(f"val_borrow: expected one of {', '.join(VAL_BORROW_MODES)}, got '{borrow}'")
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed + 1)
    sel_mask = np.zeros(len(labels), dtype=bool)
    sel_mask[selected] = True
    val, notes, removed = [], [], []
    for c in range(num_classes):
        left = np.where((labels == c) & ~sel_mask)[0]
        rng.shuffle(left)
        take = left[:per_class]
        need = per_class - len(take)
        if need > 0:
            own = np.sort(selected[labels[selected] == c])
            rng.shuffle(own)
            if borrow == "remove" and need >= len(own):
                raise ConfigError(
                    f"class {c} has {len(own) + len(take)} training images, too few to hold out {per_class} for "
                    "validation and keep any for training; pass a smaller val_per_class"
                )
            borrowed = own[:need]
            take = np.concatenate([take, borrowed])
            if borrow == "remove":
                removed.append(borrowed)
                where = "removed from training"
            else:
                where = "also kept in training (val_borrow='share': they are in both splits)"
            notes.append(
                f"class {c}: {len(borrowed)} of {per_class} validation images taken from its selected training images, {where}"
            )
        val.append(take)
    train = selected
    if removed:
        train = selected[~np.isin(selected, np.concatenate(removed))]
    return train.astype(np.int64), np.concatenate(val).astype(np.int64), notes
