"""Long-tailed Tiny-ImageNet and ImageNet: ``tiny-imagenet-lt:PATH``, ``tiny-imagenet-lt20:PATH``, ``imagenet-lt:PATH``.

``tiny-imagenet-lt:PATH`` is Tiny-ImageNet-200 (the cs231n archive, extracted
to ``PATH``) with the exponential long-tail profile of
:mod:`rfbench.benchmark.data.longtail` over its training images: class ``i``
keeps ``n_max · ρ^(−i/(C−1))`` images (``n_max`` = 500), in sorted-wnid label
order.  ρ defaults to **10**, the ratio of RobustLT's Tiny-ImageNet-LT
(Zhang et al., CVPR 2026; its released configs ``configs/tinylf/*`` use
``imbalance_rate: 10``); ``imbalance_ratio=`` changes it.  The layout is the
archive's: ``PATH/train/<wnid>/images/*.JPEG`` and either the archive's
``PATH/val/images/*`` with ``PATH/val/val_annotations.txt`` or class folders
``PATH/val/<wnid>/*``; the 50-per-class validation images are the test split
(the archive's test images are unlabelled).  RobustLT's release keeps only the
first 20 classes (labels < 20 of the sorted wnids); ``tiny-imagenet-lt20:PATH``
is that 20-class variant.  Images are 64×64; defaults: Linf 8/255, random crop
(pad 4) and flip (RobustLT's ``base`` augmentation), mean/std measured on the
training images.  The selection of images within a class uses rfbench's
reference generator (``np.random.seed(0)``), not the release's
``default_rng(seed)`` split files, so the images (not the counts) differ.

``imagenet-lt:PATH`` is ImageNet-LT (Liu et al., "Large-Scale Long-Tailed
Recognition in an Open World", CVPR 2019) read from its split lists, which the
user provides in ``PATH``: ``ImageNet_LT_train.txt`` (115,846 images, 1,280 to
5 per class), ``ImageNet_LT_test.txt`` (50 per class, from the ImageNet
validation set) and optionally ``ImageNet_LT_val.txt`` (20 per class, from the
ImageNet training set).  Each line is ``relative/path label`` with the path
relative to ``PATH`` (e.g. ``train/n01440764/n01440764_190.JPEG 0``), so
``PATH`` is the ImageNet root that holds ``train/`` and ``val/``, with the
lists beside them.  The long tail is the lists' own, so no generator is
applied; ``ImageNet_LT_val.txt``, when present, is the validation split
(otherwise a balanced split is held out of training as for every dataset).
Images get RobustBench's ImageNet preprocessing (shorter side 256, centre crop
224) and the ImageNet threat model (Linf 4/255, step 1/255); they are held in
memory as uint8 (150 KB each), so the full training list needs about 17 GB.
Class names are the wnids of the training paths (``n01440764``), else the
label number.  Without ``ImageNet_LT_train.txt`` the dataset is
evaluation-only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rfbench.benchmark.data.augment import AugmentConfig
from rfbench.benchmark.data.base import ArrayDataset, channel_stats
from rfbench.benchmark.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_EXTENSIONS,
    decode_images,
    imagenet_preprocess,
    list_classes,
    list_samples,
)
from rfbench.benchmark.data.registry import DataOptions, RawSplits, ThreatDefaults, not_loaded, register_path_scheme
from rfbench.core.errors import DataNotFoundError

#: RobustLT's Tiny-ImageNet-LT ratio (released configs/tinylf/*.yaml: imbalance_rate 10).
TINY_IMAGENET_LT_RATIO = 10.0
#: RobustLT's release keeps the first 20 classes of Tiny-ImageNet (sorted wnids).
TINY_IMAGENET_LT20_CLASSES = 20
IMAGENET_LT_LISTS = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}


# -- Tiny-ImageNet-LT -----------------------------------------------------------------------------------------

def _tiny_val_samples(val_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    ann = val_dir / "val_annotations.txt"
    if ann.is_file():
        index = {c: i for i, c in enumerate(classes)}
        paths, labels = [], []
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 2 or not parts[0]:
                continue
            if parts[1] not in index:
                raise DataNotFoundError(f"{ann}: class {parts[1]} is not a training class")
            paths.append(val_dir / "images" / parts[0])
            labels.append(index[parts[1]])
        if not paths:
            raise DataNotFoundError(f"{ann} lists no images")
        return paths, labels
    return list_samples(val_dir, classes)


def _tiny_imagenet(path: str, opts: DataOptions, num_classes: int | None) -> RawSplits:
    root = Path(path).expanduser()
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataNotFoundError(
            f"Tiny-ImageNet not found: expected {root}/train/<wnid>/images/*.JPEG and {root}/val/ (extract "
            "tiny-imagenet-200.zip there, or check the path)")
    classes = list_classes(root / "train")
    if num_classes is not None:
        if len(classes) < num_classes:
            raise DataNotFoundError(f"{root}/train has {len(classes)} classes, fewer than the {num_classes} needed")
        classes = classes[:num_classes]
    test_paths, test_labels = _tiny_val_samples(root / "val", list_classes(root / "train"))
    keep = [i for i, lab in enumerate(test_labels) if lab < len(classes)]
    test_paths, test_labels = [test_paths[i] for i in keep], [test_labels[i] for i in keep]

    def prepare(im):
        return im.convert("RGB")  # Tiny-ImageNet holds a few grayscale JPEGs among the RGB ones

    test = ArrayDataset(decode_images(test_paths, prepare), torch.tensor(test_labels), classes)
    augment = AugmentConfig(crop_padding=4, flip=True)
    if opts.test_only:
        mean, std = channel_stats(test.x)
        return RawSplits(not_loaded(test), test, augment, ThreatDefaults(), mean=mean, std=std,
                         notes=[f"mean/std {mean}/{std} measured on the test images (training split not loaded)"],
                         default_imbalance_ratio=TINY_IMAGENET_LT_RATIO)
    train_paths, train_labels = _train_samples(root / "train", classes)
    train = ArrayDataset(decode_images(train_paths, prepare), torch.tensor(train_labels), classes)
    mean, std = channel_stats(train.x)
    return RawSplits(train, test, augment, ThreatDefaults(), mean=mean, std=std,
                     default_imbalance_ratio=TINY_IMAGENET_LT_RATIO)


def _train_samples(train_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (train_dir / name).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise DataNotFoundError(f"no images in {train_dir / name}")
        paths += files
        labels += [label] * len(files)
    return paths, labels


@register_path_scheme("tiny-imagenet-lt")
def tiny_imagenet_lt(path: str, opts: DataOptions) -> RawSplits:
    """Tiny-ImageNet-200 folder with the exponential long tail, rho=10 by default (RobustLT's ratio)."""
    return _tiny_imagenet(path, opts, None)


@register_path_scheme("tiny-imagenet-lt20")
def tiny_imagenet_lt20(path: str, opts: DataOptions) -> RawSplits:
    """RobustLT's Tiny-ImageNet-LT: the first 20 classes of Tiny-ImageNet-200, exponential long tail, rho=10."""
    return _tiny_imagenet(path, opts, TINY_IMAGENET_LT20_CLASSES)


# -- ImageNet-LT ------------------------------------------------------------------------------------------------

def read_split_list(file: Path, root: Path) -> tuple[list[Path], list[int]]:
    """``relative/path label`` lines of an ImageNet-LT list -> (paths under ``root``, labels)."""
    paths, labels = [], []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        rel, _, label = line.rpartition(" ")
        if not rel or not label.lstrip("-").isdigit():
            raise DataNotFoundError(f"{file}:{n}: expected 'relative/path label', got {line!r}")
        p = (root / rel.strip())
        if not p.is_file():
            raise DataNotFoundError(f"{file}:{n}: image {p} not found")
        paths.append(p)
        labels.append(int(label))
    if not paths:
        raise DataNotFoundError(f"{file} lists no images")
    return paths, labels


def _class_names(paths: list[Path], labels: list[int], num_classes: int) -> list[str]:
    names = [str(i) for i in range(num_classes)]
    for p, lab in zip(paths, labels):
        if p.parent.name.startswith("n") and p.parent.name[1:].isdigit():
            names[lab] = p.parent.name
    return names if len(set(names)) == num_classes else [str(i) for i in range(num_classes)]


@register_path_scheme("imagenet-lt")
def imagenet_lt(path: str, opts: DataOptions) -> RawSplits:
    """ImageNet-LT from the split lists ImageNet_LT_{train,val,test}.txt in PATH (Liu et al., CVPR 2019)."""
    root = Path(path).expanduser()
    test_list = root / IMAGENET_LT_LISTS["test"]
    if not test_list.is_file():
        raise DataNotFoundError(
            f"ImageNet-LT split lists not found: expected {test_list} (and {IMAGENET_LT_LISTS['train']}, "
            f"optionally {IMAGENET_LT_LISTS['val']}) in {root}, with image paths relative to {root}")
    test_paths, test_labels = read_split_list(test_list, root)
    train_list, val_list = root / IMAGENET_LT_LISTS["train"], root / IMAGENET_LT_LISTS["val"]
    has_train = train_list.is_file()
    train_paths, train_labels = read_split_list(train_list, root) if has_train else ([], [])
    num_classes = max(test_labels + train_labels) + 1
    classes = _class_names(train_paths or test_paths, train_labels or test_labels, num_classes)
    test = ArrayDataset(decode_images(test_paths, imagenet_preprocess), torch.tensor(test_labels), classes)
    threat = ThreatDefaults(eps=4 / 255, train_alpha=1 / 255, eval_alpha=1 / 255)
    augment = AugmentConfig(crop_padding=0, flip=True)
    notes = [f"ImageNet-LT split lists from {root.name}/ (Liu et al., CVPR 2019): the long tail is the lists' own"]
    if opts.test_only:
        return RawSplits(not_loaded(test), test, augment, threat, IMAGENET_MEAN, IMAGENET_STD, notes)
    if not has_train:
        train = ArrayDataset.missing(classes, (3, 224, 224), f"{train_list} does not exist, so imagenet-lt:{path} "
                                     "is evaluation-only")
        return RawSplits(train, test, augment, threat, IMAGENET_MEAN, IMAGENET_STD, notes)
    train = ArrayDataset(decode_images(train_paths, imagenet_preprocess), torch.tensor(train_labels), classes)
    val = None
    if val_list.is_file():
        vp, vl = read_split_list(val_list, root)
        val = ArrayDataset(decode_images(vp, imagenet_preprocess), torch.tensor(vl), classes)
        notes.append(f"validation split: {IMAGENET_LT_LISTS['val']} ({len(vl)} images)")
    return RawSplits(train, test, augment, threat, IMAGENET_MEAN, IMAGENET_STD, notes, val=val)
