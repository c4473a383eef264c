"""``cifar10-jpeg``: the JPEG-encoded copy of CIFAR-10, labelled as such.

The archive ``cifar10-jpeg.tar.gz`` holds CIFAR-10's 50,000 training and
10,000 test images re-encoded as JPEG files (``train/<class>/*.jpg``,
``test/<class>/*.jpg``, the ten CIFAR-10 class names, whose sorted order is
CIFAR-10's label order).  JPEG is lossy: the pixels are not the original
CIFAR-10 pixels, so results on this copy are not CIFAR-10 results.  The
dataset therefore has its own name, which every result file, run summary and
leaderboard entry carries (``dataset: cifar10-jpeg``), and a leaderboard
track for real CIFAR-10 (``protocol.dataset: cifar10``) refuses its entries.

``--data-root DIR`` (``data_root`` in a config) is the folder that holds
``train/`` and ``test/``; the default is ``data/cifar10-jpeg``.  Everything
else follows ``imagefolder:DIR`` (:mod:`rfbench.benchmark.data.imagefolder`):
decoded once to uint8, CIFAR's threat model (Linf 8/255), crop (pad 4) and
flip, mean/std measured on the training images.
"""

from __future__ import annotations

import os
from pathlib import Path

from rfbench.benchmark.data.imagefolder import imagefolder
from rfbench.benchmark.data.registry import DEFAULT_DOWNLOAD_ROOT, DataOptions, RawSplits, register_dataset

NAME = "cifar10-jpeg"
#: the archive the timing scripts and tests extract their CIFAR-10 subsets from: ``$RFBENCH_CIFAR10_JPEG_TAR``,
#: else :data:`DEFAULT_ARCHIVE`
ARCHIVE_ENV = "RFBENCH_CIFAR10_JPEG_TAR"
DEFAULT_ARCHIVE = "/work/shared/data/cifar10-jpeg.tar.gz"


def archive_path() -> Path:
    """Where ``cifar10-jpeg.tar.gz`` is looked for (``$RFBENCH_CIFAR10_JPEG_TAR`` overrides the default)."""
    return Path(os.environ.get(ARCHIVE_ENV) or DEFAULT_ARCHIVE).expanduser()

DEFAULT_ROOT = str(Path(DEFAULT_DOWNLOAD_ROOT) / NAME)
DESCRIPTION = ("CIFAR-10 re-encoded as JPEG (cifar10-jpeg.tar.gz, lossy: not the original pixels); "
               "results are labelled cifar10-jpeg and never ranked as CIFAR-10")


@register_dataset(NAME)
def cifar10_jpeg(opts: DataOptions) -> RawSplits:
    """CIFAR-10 re-encoded as JPEG (lossy copy, labelled cifar10-jpeg); --data-root is the folder with train/ and test/."""
    return imagefolder(opts.root or DEFAULT_ROOT, opts)
