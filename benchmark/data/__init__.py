"""Datasets: uint8 in-memory splits, long-tailed variants, batch augmentation."""

from rfbench.benchmark.data import cifar10_jpeg as _cifar10_jpeg  # noqa: F401  (registers cifar10-jpeg)
from rfbench.benchmark.data import idx as _idx  # noqa: F401  (registers mnist, fashion-mnist)
from rfbench.benchmark.data import imagefolder as _imagefolder  # noqa: F401  (registers imagefolder:, imagenet:)
from rfbench.benchmark.data import imagenet_lt as _imagenet_lt  # noqa: F401  (registers tiny-imagenet-lt:, imagenet-lt:)
from rfbench.benchmark.data import torchvision_sets as _torchvision_sets  # noqa: F401  (registers cifar10, cifar100, svhn, stl10)
from rfbench.benchmark.data.augment import AugmentConfig, augment_batch
from rfbench.benchmark.data.base import ArrayDataset, DataBundle, channel_stats, iterate_batches, to_float
from rfbench.benchmark.data.longtail import VAL_BORROW_MODES, balanced_validation, longtail_counts, longtail_indices
from rfbench.benchmark.data.registry import (
    DATASETS,
    PATH_SCHEMES,
    DataOptions,
    RawSplits,
    ThreatDefaults,
    describe_dataset,
    list_datasets,
    load_dataset,
    register_dataset,
    register_path_scheme,
)
from rfbench.benchmark.data.subsets import per_class_subset, stratified_subset

__all__ = [
    "ArrayDataset",
    "AugmentConfig",
    "DATASETS",
    "DataBundle",
    "DataOptions",
    "PATH_SCHEMES",
    "RawSplits",
    "ThreatDefaults",
    "VAL_BORROW_MODES",
    "augment_batch",
    "balanced_validation",
    "channel_stats",
    "describe_dataset",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "longtail_counts",
    "longtail_indices",
    "per_class_subset",
    "register_dataset",
    "register_path_scheme",
    "stratified_subset",
    "to_float",
]
