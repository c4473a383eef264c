"""In-memory datasets held as uint8 tensors, and the batch iterator.

Every dataset is materialised once as an :class:`ArrayDataset` (uint8 images
``N×C×H×W`` and int64 labels).  Batches are converted to float in [0,1] and
augmented on the batch's device (see :mod:`rfbench.benchmark.data.augment`): no
per-sample Python transforms, no DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from rfbench.benchmark.data.augment import AugmentConfig, apply_policy, augment_batch
from rfbench.core.errors import DataNotFoundError
from rfbench.core.threat import ThreatDefaults


@dataclass
class ArrayDataset:
    """Images as uint8 ``N×C×H×W``, labels as int64 ``N``.

    ``index`` holds each sample's position in the original split it came from
    (the full training set or the full test set), so subsets stay auditable.
    ``unavailable`` marks a split that does not exist on disk (an
    evaluation-only ImageNet folder has no ``train/``): it is empty, and
    :func:`iterate_batches` raises :class:`DataNotFoundError` with this
    message instead of silently yielding nothing.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    index: torch.Tensor | None = None
    unavailable: str | None = None

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8:
            raise TypeError(f"ArrayDataset images must be uint8, got {self.x.dtype}")
        if self.x.ndim != 4:
            raise ValueError(f"ArrayDataset images must be N×C×H×W, got shape {tuple(self.x.shape)}")
        self.y = self.y.long()
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")
        if self.index is None:
            self.index = torch.arange(len(self.y))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> list[int]:
        """Number of samples per class, in label order."""
        return torch.bincount(self.y, minlength=self.num_classes).tolist()

    def subset(self, positions: torch.Tensor | list[int]) -> "ArrayDataset":
        """The samples at ``positions`` (positions in *this* dataset), keeping original indices."""
        pos = torch.as_tensor(positions, dtype=torch.long)
        return ArrayDataset(self.x[pos], self.y[pos], self.classes, self.index[pos], self.unavailable)

    def to(self, device: torch.device | str) -> "ArrayDataset":
        """Move images and labels to ``device`` (images stay uint8)."""
        return ArrayDataset(self.x.to(device), self.y.to(device), self.classes, self.index, self.unavailable)

    @classmethod
    def missing(cls, classes: list[str], shape: tuple[int, int, int], reason: str) -> "ArrayDataset":
        """An empty split of images of ``shape`` (C, H, W) that does not exist on disk, for ``reason``."""
        return cls(torch.zeros((0, *shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.long), classes, unavailable=reason)


@dataclass
class DataBundle:
    """A dataset's train / validation / test splits plus what training needs to know.

    ``train_counts`` are the per-class training counts n_i used by the
    long-tail defenses; ``notes`` records anything a result file must say
    about how the splits were made (for example, validation images taken from
    a head class's own selected images).
    """

    name: str
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    imbalance_ratio: float | None = None
    notes: list[str] = field(default_factory=list)
    threat: "ThreatDefaults | None" = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.x.shape[2]), int(self.train.x.shape[3])

    @property
    def train_counts(self) -> list[int]:
        return self.train.counts()

    @property
    def eval_only(self) -> bool:
        """True when there are no training images (an ImageNet folder without ``train/``)."""
        return self.train.unavailable is not None


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images, in [0,1] units, to 4 decimals.

    Computed exactly from each channel's 256-bin histogram.
    """
    if len(x) == 0:
        raise ValueError("channel_stats needs at least one image")
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256).double()
        m = (hist * values).sum() / hist.sum()
        var = (hist * (values - m).square()).sum() / hist.sum()
        mean.append(round(float(m) / 255, 4))
        std.append(round(float(var.sqrt()) / 255, 4))
    return tuple(mean), tuple(std)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float32 [0,1]."""
    return x.float().div_(255.0)


def iterate_batches(
    ds: ArrayDataset,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: AugmentConfig | None = None,
    order: torch.Tensor | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y, pos)``: float images in [0,1] on ``device``, labels, and positions in ``ds``.

    ``order`` overrides the sample order (a defense's class sampler uses it);
    otherwise the order is a permutation drawn from ``generator`` when
    ``shuffle``.  Augmentation draws its randomness from ``generator`` too, so a
    seeded generator makes the whole epoch reproducible.  Iterating a split
    marked ``unavailable`` raises :class:`DataNotFoundError`.
    """
    if ds.unavailable is not None:
        raise DataNotFoundError(ds.unavailable)
    n = len(ds)
    if order is None:
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = (len(order) // batch_size) * batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        pos = order[start : start + batch_size]
        x = ds.x[pos].to(device, non_blocking=True)
        y = ds.y[pos].to(device, non_blocking=True)
        if augment is not None and augment.policy != "none":
            x = apply_policy(x, augment, generator)  # RandAugment/AutoAugment on uint8, per sample
        xf = to_float(x)
        if augment is not None and augment.enabled:
            xf = augment_batch(xf, augment, generator)
        yield xf, y, pos
