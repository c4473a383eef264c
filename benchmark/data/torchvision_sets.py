"""CIFAR-10, CIFAR-100, SVHN and STL-10 in torchvision's on-disk layout.

``download=True`` fetches the files with torchvision's downloader
(``torchvision.datasets.utils``, which checks the published archive's md5)
into the layout torchvision's own dataset classes use:

=========  =========================================================================
cifar10    ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
cifar100   ``ROOT/cifar-100-python/{train,test,meta}``
svhn       ``ROOT/{train_32x32.mat,test_32x32.mat}`` (needs scipy)
stl10      ``ROOT/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin}``
=========  =========================================================================

``ROOT`` is ``--data-root`` (default ``./data``).  The files are then read
here, once, into uint8 ``N×C×H×W`` tensors, rather than through
torchvision's dataset classes: those decode one PIL image per sample, and
with ``download=False`` they refuse any file whose md5 differs from the
published one, re-hashing every file on every load (STL-10's 2.6 GB
unlabeled set included, which rfbench never uses).  Instead the readers
check the format (keys, shapes, label range) and raise
:class:`~rfbench.core.errors.DataNotFoundError` for anything missing or
malformed.  CIFAR batches are Python pickles; they are read with an
unpickler that only admits NumPy arrays, so a tampered file cannot run code.

Threat models follow ``docs/protocol.md`` (Linf 8/255; PGD-10, step 2/255 for
training; PGD-20 for evaluation).  SVHN follows the protocol's note: training
step 1/255 and a 5-epoch eps warm-up.  Augmentation: random crop (pad 4) and
horizontal flip for CIFAR and STL-10, crop only for SVHN (digits must not be
mirrored).  ``mean``/``std`` are the per-channel statistics of the loaded
training set.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rfbench.benchmark.data.augment import AugmentConfig
from rfbench.benchmark.data.base import ArrayDataset, channel_stats
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

CIFAR_AUGMENT = AugmentConfig(crop_padding=4, flip=True)
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SVHN_CLASSES = [str(i) for i in range(10)]

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes an array's raw bytes with pickle protocol 2
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and NumPy arrays only (what CIFAR batches contain)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataNotFoundError(f"corrupt file {path}: not a CIFAR python batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataNotFoundError(f"corrupt file {path}: not a CIFAR python batch (a {type(obj).__name__}, not a dict)")
    return obj


def _root(opts: DataOptions) -> Path:
    return Path(opts.root or DEFAULT_DOWNLOAD_ROOT).expanduser().absolute()


def _ensure_files(title: str, folder: Path, files: list[str], opts: DataOptions, download: Callable[[Path], None]) -> None:
    """Make sure ``folder`` holds ``files``; download them when allowed, else raise one clear error."""
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and opts.download:
        root = _root(opts)
        log.info("downloading %s into %s", title, root)
        try:
            download(root)
        except Exception as exc:  # network and archive errors come in many types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataNotFoundError(f"could not download {title} into {root}: {first}") from None
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{title} not found: expected {', '.join(missing)} in {folder} (torchvision's layout). "
            f"Rerun with `--download` to fetch it into {_root(opts)}, or pass `--data-root DIR` for a DIR that "
            f"holds {folder.relative_to(_root(opts)) if folder != _root(opts) else 'those files'}."
        )


def _check(title: str, x: np.ndarray, y: np.ndarray, num_classes: int, where: Path) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
        raise DataNotFoundError(
            f"corrupt {title} data in {where}: images {x.dtype} {x.shape}, {len(y)} labels"
        )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataNotFoundError(f"corrupt {title} data in {where}: labels outside 0..{num_classes - 1}")


def _dataset(x: np.ndarray, y: np.ndarray, classes: list[str]) -> ArrayDataset:
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)), classes)


def _splits(train: ArrayDataset | None, test: ArrayDataset, augment: AugmentConfig, threat: ThreatDefaults) -> RawSplits:
    """Raw splits with mean/std measured on the training images (on the test images when ``train`` is None: test_only)."""
    if train is None:
        mean, std = channel_stats(test.x)
        note = (f"mean/std {mean}/{std} measured on the test images (training split not loaded); a checkpoint's "
                "own normalisation buffers take precedence")
        return RawSplits(not_loaded(test), test, augment, threat, mean=mean, std=std, notes=[note])
    mean, std = channel_stats(train.x)
    return RawSplits(train, test, augment, threat, mean=mean, std=std)


# ----------------------------------------------------------------------------- CIFAR


def _download_archive(cls_name: str) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(tvd, cls_name)
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)

    return download


def _read_cifar(title: str, folder: Path, batches: list[str], label_key: str, classes: list[str]) -> ArrayDataset:
    xs, ys = [], []
    for name in batches:
        entry = _load_pickle(folder / name)
        if "data" not in entry or label_key not in entry:
            raise DataNotFoundError(f"corrupt file {folder / name}: no 'data' or '{label_key}' entry")
        data = np.asarray(entry["data"])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataNotFoundError(f"corrupt file {folder / name}: data of shape {data.shape}, expected N×3072")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry[label_key], dtype=np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    _check(title, x, y, len(classes), folder)
    return _dataset(x, y, classes)


def _cifar(opts: DataOptions, *, title: str, tv_name: str, folder: str, train: list[str], test: list[str],
           meta: str, names_key: str, label_key: str) -> RawSplits:
    d = _root(opts) / folder
    _ensure_files(title, d, train + test + [meta], opts, _download_archive(tv_name))
    classes = [str(c) for c in _load_pickle(d / meta).get(names_key, [])]
    if not classes:
        raise DataNotFoundError(f"corrupt file {d / meta}: no '{names_key}' entry")
    return _splits(
        None if opts.test_only else _read_cifar(title, d, train, label_key, classes),
        _read_cifar(title, d, test, label_key, classes),
        CIFAR_AUGMENT,
        ThreatDefaults(),
    )


@register_dataset("cifar10")
def cifar10(opts: DataOptions) -> RawSplits:
    """CIFAR-10 (Krizhevsky 2009): 50k/10k 32×32 colour images, 10 classes; Linf 8/255."""
    return _cifar(opts, title="CIFAR-10", tv_name="CIFAR10", folder="cifar-10-batches-py",
                  train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                  meta="batches.meta", names_key="label_names", label_key="labels")


@register_dataset("cifar100")
def cifar100(opts: DataOptions) -> RawSplits:
    """CIFAR-100 (Krizhevsky 2009): 50k/10k 32×32 colour images, 100 fine classes; Linf 8/255."""
    return _cifar(opts, title="CIFAR-100", tv_name="CIFAR100", folder="cifar-100-python",
                  train=["train"], test=["test"], meta="meta", names_key="fine_label_names", label_key="fine_labels")


# ----------------------------------------------------------------------------- SVHN


def _download_svhn(root: Path) -> None:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_url

    for split in ("train", "test"):
        url, filename, md5 = tvd.SVHN.split_list[split]
        download_url(url, str(root), filename, md5)


def _read_svhn(path: Path) -> ArrayDataset:
    try:
        import scipy.io
    except ImportError:
        raise DataNotFoundError("reading SVHN's .mat files needs scipy: `pip install scipy`") from None
    try:
        mat = scipy.io.loadmat(str(path))
        x = np.asarray(mat["X"]).transpose(3, 2, 0, 1)  # H×W×C×N -> N×C×H×W
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (KeyError, ValueError, OSError) as exc:
        raise DataNotFoundError(f"corrupt file {path}: not an SVHN .mat file ({exc})") from None
    y = np.where(y == 10, 0, y)  # SVHN labels the digit 0 as 10
    _check("SVHN", x, y, 10, path)
    return _dataset(x, y, SVHN_CLASSES)


@register_dataset("svhn")
def svhn(opts: DataOptions) -> RawSplits:
    """SVHN (Netzer et al. 2011): 73,257/26,032 32×32 house-number digits; Linf 8/255, step 1/255, eps warm-up."""
    d = _root(opts)
    _ensure_files("SVHN", d, ["train_32x32.mat", "test_32x32.mat"], opts, _download_svhn)
    threat = ThreatDefaults(train_alpha=1 / 255, eps_warmup_epochs=5)
    return _splits(None if opts.test_only else _read_svhn(d / "train_32x32.mat"), _read_svhn(d / "test_32x32.mat"),
                   AugmentConfig(crop_padding=4, flip=False), threat)


# ----------------------------------------------------------------------------- STL-10


def _read_stl10(folder: Path, split: str, classes: list[str]) -> ArrayDataset:
    x = np.fromfile(folder / f"{split}_X.bin", dtype=np.uint8)
    y = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1  # labels are 1-based
    if x.size != len(y) * 3 * 96 * 96:
        raise DataNotFoundError(f"corrupt STL-10 data in {folder}: {x.size} bytes of images for {len(y)} labels")
    x = x.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # stored column-major
    _check("STL-10", x, y, len(classes), folder)
    return _dataset(x, y, classes)


@register_dataset("stl10")
def stl10(opts: DataOptions) -> RawSplits:
    """STL-10 (Coates et al. 2011): 5k/8k labelled 96×96 colour images, 10 classes; Linf 8/255."""
    d = _root(opts) / "stl10_binary"
    _ensure_files("STL-10", d, ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"], opts, _download_archive("STL10"))
    names = d / "class_names.txt"
    classes = [n.strip() for n in names.read_text().splitlines() if n.strip()] if names.is_file() else STL10_CLASSES
    return _splits(None if opts.test_only else _read_stl10(d, "train", classes), _read_stl10(d, "test", classes),
                   CIFAR_AUGMENT, ThreatDefaults())
