"""CIFAR-10/100, SVHN and STL-10 from files in torchvision's exact on-disk format.

The files are small fakes written in tmp_path in the published formats
(Python-2-style pickles, MATLAB .mat, raw column-major binaries).
torchvision's own dataset classes refuse them with ``download=False``
because their md5 differs from the published files, so the md5 check is
switched off for the reference read only: rfbench's tensors must then be
exactly what torchvision decodes from the same files.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from rfbench.benchmark.data import load_dataset
from rfbench.benchmark.data.registry import load_raw
from rfbench.benchmark.data.torchvision_sets import STL10_CLASSES
from rfbench.core.errors import DataNotFoundError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _pickle(path, obj):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)  # the published batches are Python 2 cPickle files


def _images(rng, n, c=3, h=32, w=32):
    return rng.randint(0, 256, size=(n, c, h, w), dtype=np.uint8)


def make_cifar10(root, per_batch=30, seed=0):
    """cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta, labels interleaved."""
    rng = np.random.RandomState(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = _images(rng, per_batch)
        labels = rng.permutation(np.arange(per_batch) % 10).tolist()
        _pickle(d / name, {"batch_label": f"{name} of 6", "labels": labels, "data": x.reshape(per_batch, -1),
                           "filenames": [f"img_{i}.png" for i in range(per_batch)]})
    _pickle(d / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072})
    return d


def make_cifar100(root, n_train=200, n_test=100, seed=1):
    rng = np.random.RandomState(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = (np.arange(n) % 100)[rng.permutation(n)].tolist()
        _pickle(d / name, {"filenames": [f"{i}.png" for i in range(n)], "batch_label": name, "fine_labels": fine,
                           "coarse_labels": [f // 5 for f in fine], "data": _images(rng, n).reshape(n, -1)})
    _pickle(d / "meta", {"fine_label_names": [f"class{i:02d}" for i in range(100)],
                         "coarse_label_names": [f"super{i}" for i in range(20)]})
    return d


def make_svhn(root, n_train=40, n_test=20, seed=2):
    import scipy.io

    rng = np.random.RandomState(seed)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.randint(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # H×W×C×N, as published
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # the digit 0 is labelled 10
        scipy.io.savemat(str(root / name), {"X": x, "y": y})


def make_stl10(root, n_train=20, n_test=10, seed=3):
    rng = np.random.RandomState(seed)
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        _images(rng, n, h=96, w=96).tofile(d / f"{split}_X.bin")
        (np.arange(n) % 10 + 1).astype(np.uint8).tofile(d / f"{split}_y.bin")  # 1-based labels
    (d / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return d


@pytest.fixture
def no_md5(monkeypatch):
    """Let torchvision's classes read the fake files (reference reads only)."""
    for mod in ("cifar", "svhn", "stl10"):
        monkeypatch.setattr(f"torchvision.datasets.{mod}.check_integrity", lambda *a, **k: True)


def assert_same_as(tv_data_nhwc, tv_targets, ds):
    assert ds.x.dtype == torch.uint8 and ds.x.ndim == 4
    np.testing.assert_array_equal(ds.x.permute(0, 2, 3, 1).numpy(), tv_data_nhwc)
    np.testing.assert_array_equal(ds.y.numpy(), np.asarray(tv_targets))


def test_cifar10_matches_torchvision(tmp_path, no_md5):
    make_cifar10(tmp_path)
    raw = load_raw("cifar10", _opts(tmp_path))
    for split, train in ((raw.train, True), (raw.test, False)):
        ref = tvd.CIFAR10(str(tmp_path), train=train, download=False)
        assert_same_as(ref.data, ref.targets, split)
        assert split.classes == ref.classes == CIFAR10_NAMES
    assert raw.train.x.shape == (150, 3, 32, 32) and raw.test.x.shape == (30, 3, 32, 32)


def test_cifar100_matches_torchvision(tmp_path, no_md5):
    make_cifar100(tmp_path)
    raw = load_raw("cifar100", _opts(tmp_path))
    ref = tvd.CIFAR100(str(tmp_path), train=True, download=False)
    assert_same_as(ref.data, ref.targets, raw.train)
    assert raw.train.classes == ref.classes and raw.train.num_classes == 100


def test_svhn_matches_torchvision(tmp_path, no_md5):
    make_svhn(tmp_path)
    raw = load_raw("svhn", _opts(tmp_path))
    ref = tvd.SVHN(str(tmp_path), split="train", download=False)  # N×C×H×W, labels 10 -> 0
    np.testing.assert_array_equal(raw.train.x.numpy(), ref.data)
    np.testing.assert_array_equal(raw.train.y.numpy(), ref.labels)
    assert raw.train.y.min() == 0 and raw.train.y.max() == 9


def test_stl10_matches_torchvision(tmp_path, no_md5):
    make_stl10(tmp_path)
    raw = load_raw("stl10", _opts(tmp_path))
    ref = tvd.STL10(str(tmp_path), split="test", download=False)
    np.testing.assert_array_equal(raw.test.x.numpy(), ref.data)
    np.testing.assert_array_equal(raw.test.y.numpy(), ref.labels)
    assert raw.test.x.shape[1:] == (3, 96, 96) and raw.train.classes == STL10_CLASSES


def test_download_off_needs_no_md5_and_no_network(tmp_path, monkeypatch):
    """download=False reads files already present, whatever their md5; it never touches the downloader."""
    make_cifar10(tmp_path)

    def boom(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", boom)
    bundle = load_dataset("cifar10", root=str(tmp_path), download=False, val_per_class=2)
    assert bundle.train_counts == [13] * 10 and bundle.val.counts() == [2] * 10 and bundle.test.counts() == [3] * 10


def test_all_torchvision_names_registered():
    from rfbench.benchmark.data import DATASETS

    assert set(DATASETS.names()) >= {"cifar10", "cifar100", "svhn", "stl10", "mnist", "fashion-mnist"}


@pytest.mark.parametrize("name,maker,flip,alpha,warmup", [
    ("cifar10", make_cifar10, True, 2 / 255, 0),
    ("cifar100", make_cifar100, True, 2 / 255, 0),
    ("svhn", make_svhn, False, 1 / 255, 5),
    ("stl10", make_stl10, True, 2 / 255, 0),
])
def test_threat_augment_and_stats(tmp_path, name, maker, flip, alpha, warmup):
    maker(tmp_path)
    raw = load_raw(name, _opts(tmp_path))
    t = raw.threat
    assert (t.norm, t.eps, t.train_steps, t.eval_steps, t.eval_alpha) == ("linf", 8 / 255, 10, 20, 2 / 255)
    assert t.train_alpha == alpha and t.eps_warmup_epochs == warmup
    assert raw.augment.crop_padding == 4 and raw.augment.flip is flip
    x = raw.train.x.double() / 255
    np.testing.assert_allclose(raw.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-4)
    np.testing.assert_allclose(raw.std, x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False).numpy(), atol=1e-4)


def test_missing_root_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", root=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg and "--download" in msg and "\n" not in msg
    with pytest.raises(DataNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", root=str(tmp_path))


def test_download_uses_torchvision_downloader(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kw):
        calls.append((url, filename, md5))
        make_cifar10(tmp_path)

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", fake_download)
    raw = load_raw("cifar10", _opts(tmp_path, download=True))
    assert calls == [(tvd.CIFAR10.url, tvd.CIFAR10.filename, tvd.CIFAR10.tgz_md5)]
    assert len(raw.train) == 150


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    with pytest.raises(DataNotFoundError, match="could not download CIFAR-100 into .*name resolution"):
        load_raw("cifar100", _opts(tmp_path, download=True))


def test_malicious_pickle_is_refused(tmp_path):
    d = make_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(d / "data_batch_3", "wb") as fh:
        pickle.dump({"data": Evil(), "labels": []}, fh)
    with pytest.raises(DataNotFoundError, match="refusing to load builtins.print"):
        load_raw("cifar10", _opts(tmp_path))


def test_truncated_files_are_reported(tmp_path):
    d = make_cifar10(tmp_path)
    data = (d / "test_batch").read_bytes()
    (d / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataNotFoundError, match="corrupt file .*test_batch"):
        load_raw("cifar10", _opts(tmp_path))
    s = make_stl10(tmp_path / "stl")
    (s / "train_X.bin").write_bytes((s / "train_X.bin").read_bytes()[:1000])
    with pytest.raises(DataNotFoundError, match="corrupt STL-10"):
        load_raw("stl10", _opts(tmp_path / "stl"))


def test_cifar10_lt_on_cifar_files(tmp_path):
    make_cifar10(tmp_path, per_batch=500)  # 250 images per class
    bundle = load_dataset("cifar10-lt", root=str(tmp_path), imbalance_ratio=10, val_per_class=5, val_borrow="share")
    expected = [int(250 * 0.1 ** (i / 9)) for i in range(10)]
    assert bundle.train_counts == expected and bundle.val.counts() == [5] * 10


def _opts(root, download=False):
    from rfbench.benchmark.data import DataOptions

    return DataOptions(root=str(root), download=download)
