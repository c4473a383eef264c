"""``tiny-imagenet-lt:PATH`` (exponential profile, RobustLT's rho = 10) and ``imagenet-lt:PATH`` (the ImageNet-LT lists), on tiny folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rfbench.benchmark.data import load_dataset
from rfbench.core.errors import DataNotFoundError


def _img(path: Path, value: int, size=(8, 8), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    im = Image.fromarray(arr)
    (im.convert("L") if mode == "L" else im).save(path)


def _tiny(root: Path, n_classes=4, n_train=20, n_val=3) -> list[str]:
    wnids = [f"n{1000 + c:08d}" for c in range(n_classes)]
    lines = []
    for c, w in enumerate(wnids):
        for j in range(n_train):
            _img(root / "train" / w / "images" / f"{w}_{j}.JPEG", 10 * c + j % 7, mode="L" if j == 3 else "RGB")
        for j in range(n_val):
            name = f"val_{c}_{j}.JPEG"
            _img(root / "val" / "images" / name, 10 * c)
            lines.append(f"{name}\t{w}\t0\t0\t8\t8")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids


def test_tiny_imagenet_lt_uses_the_exponential_profile_at_rho_10(tmp_path):
    wnids = _tiny(tmp_path)
    b = load_dataset(f"tiny-imagenet-lt:{tmp_path}", val_per_class=2)
    assert b.classes == wnids and b.imbalance_ratio == 10 and b.image_size == (8, 8) and b.in_channels == 3
    # n_c = floor(20 * 10^(-c/3)) = 20, 9, 4, 2; the head's 2 validation images come out of its 20
    assert b.train_counts == [18, 9, 4, 2]
    assert b.val.counts() == [2, 2, 2, 2] and b.test.counts() == [3, 3, 3, 3]
    assert b.name == f"tiny-imagenet-lt:{tmp_path}"
    assert b.augment.crop_padding == 4 and b.augment.flip
    b2 = load_dataset(f"tiny-imagenet-lt:{tmp_path}", val_per_class=2, imbalance_ratio=2)
    assert b2.train_counts[1:] == [int(20 * 2 ** (-1 / 3)), int(20 * 2 ** (-2 / 3)), 10]
    ev = load_dataset(f"tiny-imagenet-lt:{tmp_path}", test_only=True)
    assert ev.eval_only and len(ev.test) == 12


def test_tiny_imagenet_lt20_keeps_the_first_20_classes(tmp_path):
    wnids = _tiny(tmp_path, n_classes=21, n_train=2, n_val=1)
    b = load_dataset(f"tiny-imagenet-lt20:{tmp_path}", test_only=True)
    assert b.classes == wnids[:20] and len(b.test) == 20 and int(b.test.y.max()) == 19


def test_tiny_imagenet_missing_layout_is_a_data_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="Tiny-ImageNet not found"):
        load_dataset(f"tiny-imagenet-lt:{tmp_path}")


def _imagenet_lt(root: Path, with_val=True) -> None:
    train, val, test = [], [], []
    for c in range(3):
        w = f"n{2000 + c:08d}"
        for j in range(6 - 2 * c):  # 6, 4, 2: the lists' own long tail
            rel = f"train/{w}/{w}_{j}.JPEG"
            _img(root / rel, 40 * c, size=(12, 10))
            train.append(f"{rel} {c}")
        rel = f"train/{w}/{w}_val.JPEG"
        _img(root / rel, 40 * c + 1, size=(12, 10))
        val.append(f"{rel} {c}")
        for j in range(2):
            rel = f"val/{w}/ILSVRC2012_val_{c}{j}.JPEG"
            _img(root / rel, 40 * c + 2, size=(12, 10))
            test.append(f"{rel} {c}")
    (root / "ImageNet_LT_train.txt").write_text("\n".join(train) + "\n")
    (root / "ImageNet_LT_test.txt").write_text("\n".join(test) + "\n")
    if with_val:
        (root / "ImageNet_LT_val.txt").write_text("\n".join(val) + "\n")


def test_imagenet_lt_reads_the_split_lists(tmp_path):
    _imagenet_lt(tmp_path)
    b = load_dataset(f"imagenet-lt:{tmp_path}")
    assert b.classes == ["n00002000", "n00002001", "n00002002"]
    assert b.train_counts == [6, 4, 2] and b.val.counts() == [1, 1, 1] and b.test.counts() == [2, 2, 2]
    assert b.image_size == (224, 224) and b.threat.eps == pytest.approx(4 / 255)
    assert b.imbalance_ratio is None  # the lists' own tail, no generator
    # the validation images are exactly the listed ones (pixel value 40c + 1), the test images those of val/
    assert sorted(int(v) for v in b.val.x[:, 0, 112, 112]) == [1, 41, 81]
    assert sorted(set(int(v) for v in b.test.x[:, 0, 112, 112])) == [2, 42, 82]


def test_imagenet_lt_without_val_list_holds_out_a_balanced_split_and_test_only_skips_training(tmp_path):
    _imagenet_lt(tmp_path, with_val=False)
    b = load_dataset(f"imagenet-lt:{tmp_path}", val_per_class=1)
    assert b.val.counts() == [1, 1, 1] and sum(b.train_counts) == 12 - 3
    ev = load_dataset(f"imagenet-lt:{tmp_path}", test_only=True)
    assert ev.eval_only and len(ev.test) == 6


def test_imagenet_lt_bad_list_lines_are_one_line_errors(tmp_path):
    _imagenet_lt(tmp_path)
    (tmp_path / "ImageNet_LT_test.txt").write_text("val/missing.JPEG 0\n")
    with pytest.raises(DataNotFoundError, match="not found"):
        load_dataset(f"imagenet-lt:{tmp_path}")
    (tmp_path / "ImageNet_LT_test.txt").write_text("no-label-here\n")
    with pytest.raises(DataNotFoundError, match="expected 'relative/path label'"):
        load_dataset(f"imagenet-lt:{tmp_path}")
    with pytest.raises(DataNotFoundError, match="split lists not found"):
        load_dataset(f"imagenet-lt:{tmp_path / 'nothing'}")
