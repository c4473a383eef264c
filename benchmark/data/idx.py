"""MNIST and Fashion-MNIST from the raw IDX files (torchvision's raw format).

Fashion-MNIST is rfbench's offline default.  Files are looked for, in order:

1. ``--data-root`` itself, ``ROOT/FashionMNIST/raw`` (torchvision's layout) and
   ``ROOT/fashion-mnist``;
2. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
3. when missing and allowed: ``apt-get install -y dataset-fashion-mnist``
   (as root, with apt present), then torchvision's downloader.

When nothing works, one message says exactly how to get the data.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from rfbench.benchmark.data.augment import AugmentConfig
from rfbench.benchmark.data.base import ArrayDataset
from rfbench.benchmark.data.registry import (
    DEFAULT_DOWNLOAD_ROOT,
    DataOptions,
    RawSplits,
    ThreatDefaults,
    not_loaded,
    register_dataset,
)
from rfbench.core.errors import DataNotFoundError

log = logging.getLogger(__name__)

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]


#: the most values one IDX file may hold (1 GiB of bytes; Fashion-MNIST's training images are 47 MB)
MAX_IDX_VALUES = 1 << 30


def read_idx(path: Path, max_values: int = MAX_IDX_VALUES) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a NumPy array, bounded before decompression and allocation.

    The header's dimensions are read first and their product checked against
    ``max_values``; then exactly that many bytes are decompressed (a ``.gz``
    that would grow beyond them is refused, not inflated).  A non-regular file,
    a truncated or corrupt file, or trailing data is one line.
    """
    import stat
    import zlib

    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataNotFoundError(f"cannot read {path}: not a regular file")
    gz = path.suffix == ".gz"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise DataNotFoundError(f"corrupt file {path}: not an unsigned-byte IDX file")
            ndim = head[3]
            if not 1 <= ndim <= 4:
                raise DataNotFoundError(f"corrupt file {path}: {ndim} dimensions (an IDX image or label file has 1 to 4)")
            raw_dims = fh.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataNotFoundError(f"corrupt file {path}: the header is truncated")
            dims = [int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim)]
            count = 1
            for d in dims:
                count *= d
            if count > max_values:
                raise DataNotFoundError(f"{path} declares {' x '.join(map(str, dims))} = {count} values, more than the "
                                        f"{max_values} rfbench reads from one IDX file (a decompression bomb?)")
            if not gz and st.st_size != 4 + 4 * ndim + count:
                raise DataNotFoundError(f"corrupt file {path}: expected {count} values, found "
                                        f"{st.st_size - 4 - 4 * ndim} (truncated?)")
            data = fh.read(count)
            if len(data) != count:
                raise DataNotFoundError(f"corrupt file {path}: expected {count} values, found {len(data)} (truncated?)")
            if fh.read(1):
                raise DataNotFoundError(f"corrupt file {path}: data after the {count} values its header declares")
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataNotFoundError(f"corrupt file {path}: {exc} (a truncated or damaged .gz?)") from None
    except OSError as exc:
        raise DataNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _check_pair(x: np.ndarray, y: np.ndarray, classes: list[str], where: str) -> None:
    """Images ``(N, H, W)`` and labels ``(N,)`` in ``[0, len(classes))``, or one line saying which is not."""
    if y.ndim != 1:
        raise DataNotFoundError(f"corrupt labels in {where}: shape {tuple(y.shape)}, expected one label per image (1-D)")
    if x.ndim != 3:
        raise DataNotFoundError(f"corrupt images in {where}: shape {tuple(x.shape)}, expected (N, height, width)")
    if len(x) != len(y):
        raise DataNotFoundError(f"{where}: {len(x)} images but {len(y)} labels")
    if y.size and int(y.max()) >= len(classes):
        bad = int(y.max())
        raise DataNotFoundError(f"corrupt labels in {where}: label {bad} at index {int(np.argmax(y == bad))}, but the "
                                f"dataset has {len(classes)} classes (labels 0 to {len(classes) - 1})")


def find_idx_dir(candidates: list[Path]) -> Path | None:
    """The first directory holding all four IDX files (plain or ``.gz``)."""
    for d in candidates:
        if all(_idx_path(d, stem) is not None for stem in IDX_FILES.values()):
            return d
    return None


def _idx_path(d: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (d / name).is_file():
            return d / name
    return None


def _load_dir(d: Path, classes: list[str], test_only: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    arrays = {k: read_idx(_idx_path(d, stem)) for k, stem in IDX_FILES.items() if not (test_only and k.startswith("train"))}
    for split in ("train", "test"):
        if f"{split}_x" in arrays:
            _check_pair(arrays[f"{split}_x"], arrays[f"{split}_y"], classes, f"{d} ({split} split)")
    mk = lambda x, y: ArrayDataset(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)), classes)
    test = mk(arrays["test_x"], arrays["test_y"])
    return (not_loaded(test) if test_only else mk(arrays["train_x"], arrays["train_y"])), test


def _try_apt_install() -> bool:
    """Install Debian's ``dataset-fashion-mnist`` when running as root with apt."""
    if not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    log.info("Fashion-MNIST not found; installing the Debian package dataset-fashion-mnist")
    install = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, capture_output=True, env=env).returncode == 0:
        return True
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)  # a fresh machine has no package lists
    return subprocess.run(install, capture_output=True, env=env).returncode == 0


def _try_torchvision(kind: str, root: Path) -> Path | None:
    import torchvision.datasets as tvd

    cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST}[kind]
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        log.warning("torchvision could not download %s: %s", kind, str(exc).splitlines()[0] if str(exc) else exc)
        return None
    return root / cls.__name__ / "raw"


def _partial(candidates: list[Path]) -> str:
    """"DIR holds only part of it (missing ...). " for the first directory with some but not all IDX files."""
    for d in candidates:
        have = {stem for stem in IDX_FILES.values() if _idx_path(d, stem) is not None}
        if have and len(have) < len(IDX_FILES):
            missing = ", ".join(f"{d / stem}[.gz]" for stem in IDX_FILES.values() if stem not in have)
            return f"{d} holds only part of it (missing {missing}). "
    return ""


def _how_to_get(kind: str, candidates: list[Path]) -> str:
    where = ", ".join(str(c) for c in candidates)
    if kind == "fashion-mnist":
        return (
            f"Fashion-MNIST not found (looked in: {where}). {_partial(candidates)}Get it with `sudo apt-get install dataset-fashion-mnist` "
            "(installs /usr/share/datasets/fashion-mnist), or rerun with `--download` on a machine with internet, "
            "or put the four *-idx*-ubyte.gz files in a directory and pass `--data-root DIR`."
        )
    return (
        f"MNIST not found (looked in: {where}). {_partial(candidates)}Rerun with `--download` on a machine with internet, or put the four "
        "*-idx*-ubyte.gz files in DIR/MNIST/raw and pass `--data-root DIR`."
    )


def _load_idx_dataset(kind: str, opts: DataOptions, classes: list[str]) -> tuple[ArrayDataset, ArrayDataset]:
    tv_name = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[kind]
    candidates: list[Path] = []
    if opts.root:
        r = Path(opts.root).expanduser()
        candidates += [r, r / tv_name / "raw", r / kind]
    if kind == "fashion-mnist" and not opts.root:  # an explicit --data-root is honoured, never swapped for another copy
        candidates.append(DEBIAN_FASHION_DIR)
    found = find_idx_dir(candidates)
    if found is None and kind == "fashion-mnist" and opts.root is None and _try_apt_install():
        found = find_idx_dir([DEBIAN_FASHION_DIR])
    if found is None and opts.download:
        found = _try_torchvision(kind, Path(opts.root or DEFAULT_DOWNLOAD_ROOT).expanduser())
    if found is None:
        raise DataNotFoundError(_how_to_get(kind, candidates))
    log.debug("loading %s from %s", kind, found)
    return _load_dir(found, classes, opts.test_only)


@register_dataset("fashion-mnist")
def fashion_mnist(opts: DataOptions) -> RawSplits:
    """Fashion-MNIST (Xiao et al. 2017): 60k/10k 28×28 grayscale, 10 classes; the offline default."""
    train, test = _load_idx_dataset("fashion-mnist", opts, FASHION_CLASSES)
    threat = ThreatDefaults(norm="linf", eps=0.1, train_steps=10, train_alpha=0.025, eval_steps=20, eval_alpha=0.025)
    return RawSplits(train, test, AugmentConfig(crop_padding=0, flip=False), threat, mean=(0.2860,), std=(0.3530,))


@register_dataset("mnist")
def mnist(opts: DataOptions) -> RawSplits:
    """MNIST (LeCun et al. 1998): 60k/10k 28×28 digits, Linf eps 0.3 (Madry et al. 2018)."""
    train, test = _load_idx_dataset("mnist", opts, MNIST_CLASSES)
    threat = ThreatDefaults(norm="linf", eps=0.3, train_steps=40, train_alpha=0.01, eval_steps=100, eval_alpha=0.01)
    return RawSplits(train, test, AugmentConfig(), threat, mean=(0.1307,), std=(0.3081,))
