"""Image-folder datasets: ``imagefolder:PATH`` and ``imagenet:PATH``.

``imagefolder:PATH`` reads ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``:

* classes are the sorted sub-folder names of ``PATH/train`` (torchvision's
  ``ImageFolder`` convention); a test class must also be a training class;
* images are the files with an image extension inside each class folder
  (sub-folders included, but linked folders are not followed, so a link loop
  cannot repeat or multiply images), in sorted path order: this is the "original
  training order" the long-tailed generator sees, so ``imagefolder:PATH``
  with ``imbalance_ratio=`` works like ``cifar10-lt``;
* every class needs at least one test image (else one line before any work);
  an image of more than ``MAX_PIXELS`` (4096×4096) pixels is refused from its
  header, before it is decoded;
* only regular files are read: a FIFO, socket or device named like an image
  is refused in one line before anything is opened (opening a FIFO blocks);
* every image is decoded once with PIL into a uint8 tensor.  16-bit images,
  grayscale (PNG ``I;16``) or colour (16-bit RGB/RGBA PNGs and TIFFs, which PIL
  would narrow to their high bytes), are converted to 8 bits only when that
  loses nothing (every value a multiple of 257, i.e. an 8-bit image stored in
  16 bits); otherwise, and for other layouts wider than 8 bits (16-bit gray
  with alpha, a colour ``.ppm`` with maxval above 255), they are refused in one
  line naming the file and its bit depth, never clipped or narrowed.  The first
  training image fixes the format: grayscale images give 1 channel, anything
  else is converted to RGB.  The size is the most common (width, height) among
  the training images, ties broken by the larger area, then the larger width
  (:func:`common_size`; every header is read, and checked against
  ``MAX_PIXELS``, before any image is decoded); an image of another size, train
  or test, is resized (bilinear) to it, and one warning lists the sizes found
  and how many images were resized;
* defaults: the protocol's CIFAR threat model (Linf 8/255), random crop
  (pad 4) and flip, and ``mean``/``std`` measured on the training images.

For example, the CIFAR-10 JPEG archive ``cifar10-jpeg.tar.gz`` (``train/<class>/``,
``test/<class>/``) extracted into ``DIR`` is ``imagefolder:DIR``.

``imagenet:PATH`` is an ImageNet-style folder, ``PATH/val/<wnid>/*`` (or
``PATH/test/``) and optionally ``PATH/train/<wnid>/*``.  Every image is
resized (shorter side to 256, bilinear) and centre-cropped to 224×224, as
RobustBench's ImageNet preprocessing does; classes are the sorted wnids,
which is the standard ImageNet label order.  Without ``PATH/train`` the
dataset is evaluation-only: its training and validation splits are marked
unavailable, and anything that tries to train on them gets a
:class:`~rfbench.core.errors.DataNotFoundError` saying so.  The threat model is
RobustBench's ImageNet Linf one (eps 4/255, step 1/255), and mean/std are
the usual ImageNet ones.  RobustBench evaluates ImageNet on a fixed
5,000-image subset of the validation set (the list ``imagenet_test_image_ids.txt``
in RobustBench); to match it, make ``PATH/val`` hold exactly those images
(symlinks are fine).  All images are held in memory (150 KB each at
224×224), so a training split is only practical for a subset of ImageNet.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from rfbench.benchmark.data.augment import AugmentConfig
from rfbench.benchmark.data.base import ArrayDataset, channel_stats
from rfbench.benchmark.data.registry import DataOptions, RawSplits, ThreatDefaults, not_loaded, register_path_scheme
from rfbench.core.errors import DataNotFoundError, RfbenchError

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224


def list_classes(split_dir: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``split_dir``."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_samples(split_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image files of ``split_dir/<class>/`` (sorted by path within each class, classes in label order), and labels.

    Every sub-folder of ``split_dir`` must be one of ``classes``.
    """
    unknown = sorted(set(list_classes(split_dir)) - set(classes))
    if unknown:
        raise DataNotFoundError(f"{split_dir} has classes that the training set lacks: {', '.join(unknown[:5])}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            Path(dirpath) / f
            for dirpath, _, filenames in os.walk(split_dir / name, followlinks=False)  # a linked folder could loop
            for f in filenames
            if f.lower().endswith(IMG_EXTENSIONS)
        )
        for f in files:
            if not f.is_file():  # a FIFO would block the decoder forever; a device could be endless
                raise DataNotFoundError(f"{f} is not a regular file (a FIFO, socket or device?); an image folder "
                                        "may hold only regular image files")
        if not files:
            if split_dir.name == "test":  # every class needs test images, or its per-class numbers do not exist
                raise DataNotFoundError(f"class '{name}' has no test images in {split_dir / name}; add some or "
                                        "remove the class from train/ too")
            log.warning("no images in %s", split_dir / name)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataNotFoundError(f"no images found in {split_dir}/<class>/ (extensions: {', '.join(IMG_EXTENSIONS)})")
    return paths, labels


#: the most pixels one image may have (a decompression-bomb limit, checked from the header before decoding)
MAX_PIXELS = 4096 * 4096


def _check_pixels(path: Path, im: Image.Image) -> None:
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise DataNotFoundError(f"image {path} is {w}x{h} pixels, more than the {MAX_PIXELS} rfbench decodes "
                                "(a decompression-bomb limit); resize it first")


#: 16-bit grayscale modes PIL opens (``I`` is what older Pillow versions give a 16-bit PNG)
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

#: raw layouts of 16-bit samples that PIL decodes into an 8-bit mode by keeping each sample's high byte
#: (16-bit RGB/RGBA PNGs, 16-bit colour TIFFs), mapped to the same layout in the other byte order, which
#: decodes the same bytes into each sample's *low* byte
LOW_BYTE_LAYOUTS = {f"{m};16{a}": f"{m};16{b}" for m in ("RGB", "RGBA", "RGBX", "CMYK") for a, b in (("B", "L"), ("L", "B"))}


def _raw_layout(args: object) -> str:
    """The raw layout (PIL's "rawmode") in a tile's decoder arguments, or "" when it names none."""
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


def wide_samples(im: Image.Image) -> tuple[str, str | None] | None:
    """How PIL would narrow ``im``'s samples to 8 bits when decoding it, or None when it keeps every bit.

    Returns (what is narrowed, the raw layout that decodes each sample's low byte, or None when
    there is no such layout).  Read from the decoder's plan (``im.tile``), so call it before the
    image is loaded.  16-bit grayscale images are not narrowed (PIL gives them a 16-bit mode).
    """
    if im.mode in WIDE_GRAY_MODES or im.mode == "F":
        return None
    for tile in getattr(im, "tile", None) or ():
        decoder, args = tile[0], tile[3]
        raw = _raw_layout(args)
        if ";16" in raw:
            return f"16-bit samples (layout {raw})", LOW_BYTE_LAYOUTS.get(raw)
        maxval = args[1] if decoder in ("ppm", "ppm_plain") and isinstance(args, tuple) and len(args) > 1 else None
        if isinstance(maxval, int) and maxval > 255:  # PIL scales such samples down to 0..255
            return f"samples up to {maxval} (more than 8 bits)", None
    return None


def _with_layout(tile: Any, layout: str) -> Any:
    """A decoder tile of PIL with its raw layout replaced (a named tuple since Pillow 11, a plain tuple before)."""
    args = layout if isinstance(tile[3], str) else (layout, *tile[3][1:])
    return tile._replace(args=args) if hasattr(tile, "_replace") else (tile[0], tile[1], tile[2], args)


def _exact_8bit(im: Image.Image, path: Path | str, wide: tuple[str, str | None]) -> Image.Image:
    """``im`` as PIL decodes it (the high byte of each 16-bit sample) when that is exact, else one line why not.

    The high byte is exact when every sample is a multiple of 257 (an 8-bit value stored in 16
    bits), i.e. when its low byte equals its high byte: the file is decoded a second time in the
    other byte order (which gives the low bytes) and the two decodings are compared.
    """
    what, low_layout = wide
    advice = "convert the folder to 8-bit images first (rfbench stores uint8 pixels)"
    if low_layout is None or not path:
        raise DataNotFoundError(f"image {path} has {what}, which rfbench cannot convert to 8 bits exactly; {advice}")
    with Image.open(path) as low:
        low.tile = [_with_layout(t, low_layout) for t in low.tile]
        exact = np.array_equal(np.asarray(im), np.asarray(low))
    if not exact:
        raise DataNotFoundError(f"image {path} has {what} that 8 bits cannot hold without loss (not every sample is "
                                f"a multiple of 257); {advice}")
    return im


def to_8bit(im: Image.Image, path: Path | str = "") -> Image.Image:
    """``im`` with 8-bit samples: a wider image only when no value is lost, else one line why not.

    PIL's own ``convert("L")`` clips 16-bit grayscale values above 255 (nearly every pixel of a
    real 16-bit image), and PIL decodes 16-bit colour images (RGB/RGBA PNGs, colour TIFFs) into
    their high bytes, silently.  Here a 16-bit image converts exactly when every value is a
    multiple of 257 (0..65535 onto 0..255); any other 16-bit, wider or float image is refused.
    Call it before the image is loaded (:func:`wide_samples` reads the decoder's plan).
    """
    wide = wide_samples(im)
    if wide is not None:
        return _exact_8bit(im, path or getattr(im, "filename", "") or "", wide)
    if im.mode in WIDE_GRAY_MODES:
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535 or (arr % 257).any()):
            raise DataNotFoundError(f"image {path} has 16-bit pixels (mode {im.mode}) that 8 bits cannot hold without "
                                    "loss; convert the folder to 8-bit images first (rfbench stores uint8 pixels)")
        return Image.fromarray((arr // 257).astype(np.uint8), mode="L")
    if im.mode == "F":
        raise DataNotFoundError(f"image {path} has floating-point pixels (mode F); convert it to 8-bit first")
    return im


def _decode_error(path: Path, exc: Exception) -> DataNotFoundError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataNotFoundError(f"cannot decode image {path}: {first}")


def _open(path: Path, prepare: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """``prepare(image)`` as an H×W×C uint8 array; an unreadable file is a :class:`DataNotFoundError`."""
    try:
        with Image.open(path) as im:
            _check_pixels(path, im)
            arr = np.asarray(prepare(to_8bit(im, path)))
    except RfbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many types for hostile files (ValueError, SyntaxError, ...)
        raise _decode_error(path, exc) from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _mode_and_size(path: Path) -> tuple[str, tuple[int, int]]:
    """The PIL mode rfbench converts a folder to ("L" for grayscale images, else "RGB") and the image's (W, H)."""
    try:
        with Image.open(path) as im:
            _check_pixels(path, im)
            return ("L" if im.mode in GRAY_MODES or im.mode in WIDE_GRAY_MODES else "RGB"), im.size
    except RfbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - see _open
        raise _decode_error(path, exc) from None


def size_counts(paths: list[Path], workers: int | None = None) -> Counter:
    """How many of ``paths`` have each (W, H), read from the headers only (each checked against ``MAX_PIXELS``)."""
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return Counter(size for _, size in pool.map(_mode_and_size, paths))


def common_size(counts: Counter) -> tuple[int, int]:
    """The (W, H) an image folder is resized to: the most common, ties broken by the larger area, then width."""
    return max(counts, key=lambda wh: (counts[wh], wh[0] * wh[1], wh))


def decode_images(paths: list[Path], prepare: Callable[[Image.Image], Image.Image], workers: int | None = None) -> torch.Tensor:
    """Decode ``paths`` with PIL, apply ``prepare`` (same-size output), and stack as uint8 ``N×C×H×W``.

    Decoding runs in a thread pool, in chunks (PIL releases the GIL while decoding).
    """
    first = _open(paths[0], prepare)
    out = np.empty((len(paths), first.shape[2], first.shape[0], first.shape[1]), dtype=np.uint8)
    out[0] = first.transpose(2, 0, 1)

    def fill(chunk: range) -> None:
        for i in chunk:
            out[i] = _open(paths[i], prepare).transpose(2, 0, 1)

    log.info("decoding %d images from %s", len(paths), paths[0].parent.parent)
    chunks = [range(s, min(s + 512, len(paths))) for s in range(1, len(paths), 512)]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, chunks))
    return torch.from_numpy(out)


def _folder_split(
    split_dir: Path,
    classes: list[str],
    prepare: Callable[[Image.Image], Image.Image],
    samples: tuple[list[Path], list[int]] | None = None,
) -> ArrayDataset:
    paths, labels = samples or list_samples(split_dir, classes)
    return ArrayDataset(decode_images(paths, prepare), torch.tensor(labels, dtype=torch.long), classes)


def _missing_layout(path: Path, what: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"image folder not found: expected {what} (for example {path}/train/cat/0001.jpg); "
        "extract or arrange the images that way, or check the path"
    )


@register_path_scheme("imagefolder")
def imagefolder(path: str, opts: DataOptions) -> RawSplits:
    """PATH/{train,test}/<class>/* image folders, decoded once to uint8 (at the most common training size)."""
    root = Path(path).expanduser()
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise _missing_layout(root, f"{root}/train/<class>/* and {root}/test/<class>/*")
    classes = list_classes(root / "train")
    if not classes:
        raise _missing_layout(root, f"class folders in {root}/train")
    train_samples = list_samples(root / "train", classes)  # lists files only (decoding is the cost)
    mode, _ = _mode_and_size(train_samples[0][0])
    sizes = size_counts(train_samples[0])
    size = common_size(sizes)
    resized: list[Path] = []  # list.append is atomic, and prepare runs in several threads

    def prepare(im: Image.Image) -> Image.Image:
        if im.size != size:
            resized.append(Path(getattr(im, "filename", "") or ""))
            return im.convert(mode).resize(size, Image.BILINEAR)
        return im.convert(mode)

    test = _folder_split(root / "test", classes, prepare)
    train = None if opts.test_only else _folder_split(root / "train", classes, prepare, train_samples)
    if resized:
        found = ", ".join(f"{w}x{h} ({n} training images)" for (w, h), n in sorted(sizes.items()))
        log.warning("%s: resized %d images (e.g. %s) to the most common training size %dx%d; sizes found: %s",
                    root, len(resized), resized[0], *size, found)
    augment = AugmentConfig(crop_padding=4, flip=True)
    if train is None:  # test_only: the training images are never decoded
        mean, std = channel_stats(test.x)
        note = (f"mean/std {mean}/{std} measured on the test images (training split not loaded); a checkpoint's "
                "own normalisation buffers take precedence")
        return RawSplits(not_loaded(test), test, augment, ThreatDefaults(), mean=mean, std=std, notes=[note])
    mean, std = channel_stats(train.x)
    return RawSplits(train, test, augment, ThreatDefaults(), mean=mean, std=std)


def imagenet_preprocess(im: Image.Image) -> Image.Image:
    """RGB, shorter side resized to 256 (bilinear), centre crop 224×224 (RobustBench's ImageNet preprocessing)."""
    import torchvision.transforms.functional as TF

    im = TF.resize(to_8bit(im, getattr(im, "filename", "")).convert("RGB"), IMAGENET_RESIZE, interpolation=TF.InterpolationMode.BILINEAR)
    return TF.center_crop(im, [IMAGENET_CROP, IMAGENET_CROP])


@register_path_scheme("imagenet")
def imagenet(path: str, opts: DataOptions) -> RawSplits:
    """ImageNet-style PATH/{val,train}/<wnid>/*, resized 256 + centre crop 224; train optional (eval-only)."""
    root = Path(path).expanduser()
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if test_dir is None:
        raise _missing_layout(root, f"{root}/val/<wnid>/* (or {root}/test/<wnid>/*) and optionally {root}/train/<wnid>/*")
    train_dir = root / "train"
    classes = list_classes(train_dir if train_dir.is_dir() else test_dir)
    test = _folder_split(test_dir, classes, imagenet_preprocess)
    if opts.test_only:
        train = not_loaded(test)
    elif train_dir.is_dir():
        train = _folder_split(train_dir, classes, imagenet_preprocess)
    else:
        train = ArrayDataset.missing(
            classes, (3, IMAGENET_CROP, IMAGENET_CROP),
            f"{train_dir} does not exist, so imagenet:{path} is evaluation-only; training needs {train_dir}/<wnid>/*",
        )
    threat = ThreatDefaults(eps=4 / 255, train_alpha=1 / 255, eval_alpha=1 / 255)
    return RawSplits(train, test, AugmentConfig(crop_padding=0, flip=True), threat, mean=IMAGENET_MEAN, std=IMAGENET_STD)
