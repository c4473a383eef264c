"""``imagefolder:PATH`` on the real CIFAR-10 JPEG archive, and ``imagenet:PATH``.

The archive (``cifar10_jpeg.archive_path()``: ``$RFBENCH_CIFAR10_JPEG_TAR`` or
``/work/shared/data/cifar10-jpeg.tar.gz``; ``train/<class>/NNNN.jpg``
and ``test/<class>/NNNN.jpg``) is streamed once per module and only the
images numbered below 20 are extracted (20 per class and split), which keeps
the test fast.  The test marked ``slow`` reads all 60,000 images.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rfbench.benchmark.data import cifar10_jpeg, iterate_batches, load_dataset
from rfbench.benchmark.data.registry import load_raw
from rfbench.core.errors import DataNotFoundError

ARCHIVE = cifar10_jpeg.archive_path()
CIFAR10_FOLDERS = sorted(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
PER_CLASS = 20

pytestmark = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present")


def extract(dest: Path, keep=lambda stem: True) -> Path:
    with tarfile.open(ARCHIVE, "r|gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg") and keep(int(Path(m.name).stem)):
                out = dest / m.name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())
    return dest


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    return extract(tmp_path_factory.mktemp("cifar10-jpeg"), keep=lambda i: i < PER_CLASS)


@pytest.fixture(scope="module")
def cifar_raw(cifar_dir):
    return load_raw(f"imagefolder:{cifar_dir}")


def test_layout_classes_and_counts(cifar_raw):
    for split in (cifar_raw.train, cifar_raw.test):
        assert split.classes == CIFAR10_FOLDERS
        assert split.counts() == [PER_CLASS] * 10
        assert split.x.dtype == torch.uint8 and tuple(split.x.shape) == (10 * PER_CLASS, 3, 32, 32)
        assert torch.equal(split.y, torch.arange(10).repeat_interleave(PER_CLASS))


def test_pixels_equal_pil_decode_in_sorted_order(cifar_dir, cifar_raw):
    files = sorted((cifar_dir / "train" / "cat").glob("*.jpg"))
    start = CIFAR10_FOLDERS.index("cat") * PER_CLASS
    for k in (0, 7, PER_CLASS - 1):
        ref = np.asarray(Image.open(files[k]).convert("RGB")).transpose(2, 0, 1)
        np.testing.assert_array_equal(cifar_raw.train.x[start + k].numpy(), ref)


def test_defaults_and_measured_stats(cifar_raw):
    assert cifar_raw.augment.crop_padding == 4 and cifar_raw.augment.flip
    assert cifar_raw.threat.eps == 8 / 255
    x = cifar_raw.train.x.double() / 255
    np.testing.assert_allclose(cifar_raw.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-4)


def test_long_tail_and_validation_on_a_folder(cifar_dir):
    bundle = load_dataset(f"imagefolder:{cifar_dir}", imbalance_ratio=10, val_per_class=2)
    counts = [int(PER_CLASS * 0.1 ** (i / 9)) for i in range(10)]  # n_max = 20 images per class
    assert bundle.val.counts() == [2] * 10
    assert bundle.train_counts == [counts[0] - 2] + counts[1:]
    assert bundle.name == f"imagefolder:{cifar_dir}-lt"
    assert not set(bundle.train.index.tolist()) & set(bundle.val.index.tolist())


def test_images_of_another_size_are_resized(cifar_dir, tmp_path, caplog):
    d = tmp_path / "mixed"
    shutil.copytree(cifar_dir, d)
    Image.new("RGB", (40, 36), (255, 0, 0)).save(d / "test" / "cat" / "zz-big.png")
    with caplog.at_level(logging.WARNING):
        raw = load_raw(f"imagefolder:{d}")
    assert raw.test.x.shape[1:] == (3, 32, 32) and raw.test.counts()[CIFAR10_FOLDERS.index("cat")] == PER_CLASS + 1
    big = raw.test.x[(CIFAR10_FOLDERS.index("cat") + 1) * PER_CLASS]  # last of the cat images: zz-big.png
    assert (big[0] == 255).all() and (big[1:] == 0).all()
    assert "resized 1 images" in caplog.text


def test_grayscale_folder_has_one_channel(tmp_path):
    rng = np.random.RandomState(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.randint(0, 256, (12, 12), dtype=np.uint8), "L").save(tmp_path / split / c / f"{i}.png")
    raw = load_raw(f"imagefolder:{tmp_path}")
    assert raw.train.x.shape == (6, 1, 12, 12) and len(raw.mean) == 1
    ref = np.asarray(Image.open(tmp_path / "train" / "b" / "2.png"))
    np.testing.assert_array_equal(raw.train.x[5, 0].numpy(), ref)


def test_bad_layouts_are_clear_errors(tmp_path, cifar_dir):
    with pytest.raises(DataNotFoundError, match=r"train/<class>/\* and .*test/<class>/\*"):
        load_raw(f"imagefolder:{tmp_path / 'none'}")
    d = tmp_path / "extra-class"
    shutil.copytree(cifar_dir, d)
    shutil.copytree(d / "test" / "cat", d / "test" / "unicorn")
    with pytest.raises(DataNotFoundError, match="unicorn"):
        load_raw(f"imagefolder:{d}")
    (tmp_path / "bad" / "train" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "test" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "train" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataNotFoundError, match="cannot decode image"):
        load_raw(f"imagefolder:{tmp_path / 'bad'}")


def make_imagenet(root: Path, with_train: bool, test_name: str = "val") -> None:
    rng = np.random.RandomState(1)
    splits = [test_name] + (["train"] if with_train else [])
    for split in splits:
        for wnid in ("n01440764", "n01443537"):
            (root / split / wnid).mkdir(parents=True)
            for i, (w, h) in enumerate([(120, 160), (200, 90)]):  # upscaled to a 256 shorter side
                Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / wnid / f"{i}.JPEG")


def test_imagenet_resize_256_centre_crop_224(tmp_path):
    import torchvision.transforms as T

    make_imagenet(tmp_path, with_train=True)
    raw = load_raw(f"imagenet:{tmp_path}")
    assert raw.test.x.shape == (4, 3, 224, 224) and raw.train.x.shape == (4, 3, 224, 224)
    assert raw.test.classes == ["n01440764", "n01443537"]
    robustbench = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])  # RobustBench's Res256Crop224
    for k, path in enumerate(sorted((tmp_path / "val" / "n01443537").glob("*.JPEG"))):
        assert torch.equal(raw.test.x[2 + k], robustbench(Image.open(path).convert("RGB")))
    assert raw.threat.eps == 4 / 255 and raw.mean == (0.485, 0.456, 0.406)


def test_imagenet_without_train_is_evaluation_only(tmp_path, capsys):
    from rfbench.benchmark.cli import main

    make_imagenet(tmp_path, with_train=False, test_name="test")
    bundle = load_dataset(f"imagenet:{tmp_path}")
    assert bundle.eval_only and len(bundle.train) == 0 and len(bundle.val) == 0
    assert bundle.test.counts() == [2, 2] and bundle.num_classes == 2 and bundle.in_channels == 3
    assert any("evaluation-only" in n for n in bundle.notes)
    batches = list(iterate_batches(bundle.test, 3))
    assert [len(y) for _, y, _ in batches] == [3, 1]
    for split in (bundle.train, bundle.val):
        with pytest.raises(DataNotFoundError, match=f"{tmp_path / 'train'} does not exist.*evaluation-only"):
            next(iterate_batches(split, 8))
    assert main(["data", "describe", f"imagenet:{tmp_path}"]) == 0
    assert "n01440764" in capsys.readouterr().out


@pytest.mark.slow
def test_full_cifar10_jpeg_archive(tmp_path):
    """All 60,000 images: CIFAR-10's sizes, and the protocol's CIFAR-10-LT counts on a real folder."""
    d = extract(tmp_path)
    bundle = load_dataset(f"imagefolder:{d}", imbalance_ratio=100, val_borrow="share")
    assert bundle.test.counts() == [1000] * 10
    assert bundle.train_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert bundle.val.counts() == [100] * 10


def _tiny_folder(root: Path, classes=("a", "b"), per=2) -> Path:
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per):
                Image.new("L", (8, 8), 40 * i).save(root / split / c / f"{i}.png")
    return root


def test_linked_folders_are_not_followed(tmp_path):
    d = _tiny_folder(tmp_path / "f")
    (d / "train" / "a" / "loop").symlink_to(d / "train" / "a", target_is_directory=True)  # a cycle
    (d / "train" / "b" / "other").symlink_to(d / "train" / "a", target_is_directory=True)
    raw = load_raw(f"imagefolder:{d}")
    assert list(raw.train.counts()) == [2, 2]  # not 2 + looped copies


def test_a_class_without_test_images_is_refused_before_decoding(tmp_path):
    d = _tiny_folder(tmp_path / "f")
    for f in (d / "test" / "b").iterdir():
        f.unlink()
    with pytest.raises(DataNotFoundError, match="class 'b' has no test images"):
        load_raw(f"imagefolder:{d}")


def test_a_huge_image_is_refused_from_its_header(tmp_path, monkeypatch):
    import rfbench.benchmark.data.imagefolder as imf

    d = _tiny_folder(tmp_path / "f")
    Image.new("L", (80, 80)).save(d / "train" / "a" / "0-big.png")  # sorted first
    monkeypatch.setattr(imf, "MAX_PIXELS", 64 * 64)
    with pytest.raises(DataNotFoundError, match="80x80 pixels, more than"):
        load_raw(f"imagefolder:{d}")


def test_mixed_sizes_follow_the_most_common_training_size_not_the_first_image(tmp_path, caplog):
    """A 64x48 image sorted first, then three 20x16 and two 16x20 images: all become 20x16 (3 beat 2 and 1)."""
    from rfbench.benchmark.data.imagefolder import common_size

    d = tmp_path / "mixed-sizes"
    for split, cls, name, size in [("train", "a", "0-big.png", (64, 48)), ("train", "a", "1.png", (20, 16)),
                                   ("train", "b", "2.png", (20, 16)), ("train", "b", "3.png", (20, 16)),
                                   ("train", "b", "4.png", (16, 20)), ("train", "a", "5.png", (16, 20)),
                                   ("test", "a", "6.png", (16, 20)), ("test", "b", "7.png", (20, 16))]:
        (d / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (0, 200, 0)).save(d / split / cls / name)
    with caplog.at_level(logging.WARNING):
        raw = load_raw(f"imagefolder:{d}")
    assert raw.train.x.shape == (6, 3, 16, 20) and raw.test.x.shape == (2, 3, 16, 20)  # N, C, H=16, W=20
    assert (raw.train.x[:, 1] == 200).all() and (raw.test.x[:, 0] == 0).all()  # a uniform image stays uniform
    assert "resized 4 images" in caplog.text and "most common training size 20x16" in caplog.text
    assert "16x20 (2 training images), 20x16 (3 training images), 64x48 (1 training images)" in caplog.text
    from collections import Counter
    assert common_size(Counter({(16, 20): 2, (20, 16): 2, (8, 8): 1})) == (20, 16)  # tie, same area: the wider
    assert common_size(Counter({(10, 10): 2, (12, 12): 2})) == (12, 12)  # tie: the larger area
