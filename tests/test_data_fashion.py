"""Fashion-MNIST and MNIST from IDX files: the real Debian data, torchvision agreement, missing-data message."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from rfbench.benchmark.data import idx
from rfbench.benchmark.data.registry import DataOptions, load_raw
from rfbench.core.errors import DataNotFoundError

DEBIAN = idx.DEBIAN_FASHION_DIR
pytestmark = pytest.mark.skipif(idx.find_idx_dir([DEBIAN]) is None, reason=f"{DEBIAN} not installed")


@pytest.fixture(scope="module")
def fashion():
    return load_raw("fashion-mnist")  # no root: found in /usr/share/datasets/fashion-mnist


def test_fashion_mnist_real_data(fashion):
    assert fashion.train.x.shape == (60000, 1, 28, 28) and fashion.test.x.shape == (10000, 1, 28, 28)
    assert fashion.train.x.dtype == torch.uint8 and fashion.train.y.dtype == torch.int64
    assert fashion.train.counts() == [6000] * 10 and fashion.test.counts() == [1000] * 10
    assert fashion.train.classes[0] == "T-shirt/top" and fashion.train.classes[9] == "Ankle boot"
    t = fashion.threat
    assert (t.norm, t.eps, t.train_steps, t.train_alpha, t.eval_steps) == ("linf", 0.1, 10, 0.025, 20)
    assert not fashion.augment.enabled  # no crop, no flip for MNIST-like data
    x = fashion.train.x.double() / 255
    assert abs(fashion.mean[0] - x.mean().item()) < 1e-3 and abs(fashion.std[0] - x.std().item()) < 1e-3


def test_matches_torchvision_reader(fashion, tmp_path):
    """torchvision's FashionMNIST reads the same test images and labels from its raw/ layout."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in idx.IDX_FILES.values():
        if stem.startswith("t10k"):
            with gzip.open(DEBIAN / f"{stem}.gz") as src, open(raw / stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            (raw / stem).touch()  # torchvision only checks that the training files exist when reading the test split
    ref = tvd.FashionMNIST(str(tmp_path), train=False, download=False)
    assert torch.equal(fashion.test.x[:, 0], ref.data) and torch.equal(fashion.test.y, ref.targets)
    # and rfbench reads the same (uncompressed) torchvision layout through --data-root
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / stem).unlink()
        (raw / f"{stem}.gz").symlink_to(DEBIAN / f"{stem}.gz")
    via_root = load_raw("fashion-mnist", DataOptions(root=str(tmp_path)))
    assert torch.equal(via_root.test.x, fashion.test.x) and torch.equal(via_root.train.y, fashion.train.y)


def test_missing_data_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "DEBIAN_FASHION_DIR", tmp_path / "usr-share-datasets-fashion-mnist")
    monkeypatch.setattr(idx, "_try_apt_install", lambda: False)  # no apt (or not root)
    tried = []
    monkeypatch.setattr(idx, "_try_torchvision", lambda kind, root: tried.append(root))  # offline: returns None
    with pytest.raises(DataNotFoundError) as err:
        load_raw("fashion-mnist", DataOptions(download=True))
    msg = str(err.value)
    assert tried, "with --download, torchvision's downloader must be tried before giving up"
    assert "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg and "--data-root" in msg
    assert str(tmp_path / "usr-share-datasets-fashion-mnist") in msg


def test_apt_is_tried_when_no_root_is_given(tmp_path, monkeypatch):
    """A fresh Debian machine: the data appears after apt installs dataset-fashion-mnist."""
    target = tmp_path / "fashion-mnist"
    monkeypatch.setattr(idx, "DEBIAN_FASHION_DIR", target)

    def fake_apt() -> bool:
        shutil.copytree(DEBIAN, target)
        return True

    monkeypatch.setattr(idx, "_try_apt_install", fake_apt)
    raw = load_raw("fashion-mnist")
    assert raw.train.counts() == [6000] * 10


def test_missing_mnist_message(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"MNIST not found.*--download"):
        load_raw("mnist", DataOptions(root=str(tmp_path)))


def test_truncated_idx_file_is_reported(tmp_path):
    for stem in idx.IDX_FILES.values():
        shutil.copy(DEBIAN / f"{stem}.gz", tmp_path / f"{stem}.gz")
    data = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(data[:5000])
    assert idx.find_idx_dir([tmp_path]) == tmp_path
    with pytest.raises(DataNotFoundError, match="truncated"):
        idx.read_idx(tmp_path / "t10k-images-idx3-ubyte")
    header = np.frombuffer(data[:16], dtype=">u4")
    assert header.tolist() == [2051, 10000, 28, 28]  # the IDX magic number and dims read by hand
