"""Every reader has a bound, and every hostile file is one line (or a correct result).

IDX files (labels out of range, truncated ``.gz``, count mismatch, 2-D labels, bombs), image folders
(FIFOs, 16-bit grayscale and colour PNGs and TIFFs, 16-bit gray with alpha, a 16-bit colour ``.ppm``, a ``.ppm`` with maxval 0, class names that look like markup), checkpoints
(zip bombs; run checkpoints with a bad ``meta``, no ``model`` or non-tensor values) and the layout
cache (FIFO, corrupt, not an object).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import signal
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rfbench.benchmark.data.idx import FASHION_CLASSES, _load_dir, read_idx
from rfbench.benchmark.data.imagefolder import imagefolder, to_8bit
from rfbench.benchmark.data.registry import DataOptions
from rfbench.benchmark.eval.plots import confusion_flow_figure, per_class_figure, save_figure
from rfbench.benchmark.train import runtime
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.rundir import load_run_model
from rfbench.benchmark.train.trainer import train
from rfbench.core.errors import CheckpointError, RfbenchError
from rfbench.core.io import load_checkpoint


@pytest.fixture
def alarm():
    """Fail (instead of hanging forever) when the block takes more than 20 s: a FIFO read blocks."""
    def on_alarm(*_):
        raise TimeoutError("the reader blocked")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# -- IDX -------------------------------------------------------------------------------
def idx_bytes(arr: np.ndarray, dims: list[int] | None = None) -> bytes:
    dims = list(arr.shape) if dims is None else dims
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + arr.astype(np.uint8).tobytes()


def write_idx_dir(d: Path, n_train=20, n_test=10, labels=None, test_labels=None, gz=True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    parts = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(n_train) % 10 if labels is None else labels),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(n_test) % 10 if test_labels is None else test_labels),
    }
    for name, data in parts.items():
        (d / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return d


def test_a_good_idx_dir_loads(tmp_path):
    train_set, test_set = _load_dir(write_idx_dir(tmp_path / "d"), FASHION_CLASSES)
    assert tuple(train_set.x.shape) == (20, 1, 28, 28) and train_set.y.tolist() == [i % 10 for i in range(20)]
    assert len(test_set) == 10


@pytest.mark.parametrize("case, fragment", [
    ("label out of range", "label 12 at index 3"),
    ("label count mismatch", "20 images but 19 labels"),
    ("2-D labels", "expected one label per image"),
])
def test_bad_labels_are_one_line(tmp_path, case, fragment):
    if case == "label out of range":
        labels = np.arange(20) % 10
        labels[3] = 12
        d = write_idx_dir(tmp_path / "d", labels=labels)
    elif case == "label count mismatch":
        d = write_idx_dir(tmp_path / "d", labels=np.arange(19) % 10)
    else:
        d = write_idx_dir(tmp_path / "d", labels=(np.arange(20) % 10).reshape(20, 1))
    with pytest.raises(RfbenchError, match=fragment):
        _load_dir(d, FASHION_CLASSES)


def test_truncated_gz_and_truncated_raw_are_one_line(tmp_path):
    d = write_idx_dir(tmp_path / "d")
    path = d / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(RfbenchError, match="corrupt file"):
        read_idx(path)
    raw = tmp_path / "raw-idx3-ubyte"
    raw.write_bytes(idx_bytes(np.zeros((10, 28, 28)))[:-5])
    with pytest.raises(RfbenchError, match="truncated"):
        read_idx(raw)


def test_idx_bombs_are_refused_before_decompression(tmp_path):
    # a header declaring 60000 x 4096 x 4096 values (1 TB): refused from the header, nothing inflated
    huge = tmp_path / "huge-idx3-ubyte.gz"
    huge.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 60000, 4096, 4096) + bytes(1000)))
    with pytest.raises(RfbenchError, match="decompression bomb"):
        read_idx(huge)
    # a small header followed by far more data than it declares: read up to the declared size, then refused
    body = bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(10)
    stream = tmp_path / "long-idx1-ubyte.gz"
    with open(stream, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as fh:
        fh.write(body)
        for _ in range(64):
            fh.write(bytes(1 << 20))  # 64 MiB of zeros, ~64 KiB compressed
    with pytest.raises(RfbenchError, match="data after the 10 values"):
        read_idx(stream)
    # and a bound given explicitly holds
    with pytest.raises(RfbenchError, match="more than the 5"):
        read_idx(write_idx_dir(tmp_path / "d") / "t10k-labels-idx1-ubyte.gz", max_values=5)


def test_an_idx_fifo_is_refused_without_blocking(tmp_path, alarm):
    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    with pytest.raises(RfbenchError, match="not a regular file"):
        read_idx(fifo)


# -- image folders ---------------------------------------------------------------------
def folder(root: Path, classes=("a", "b"), per=2, size=8, mode="L") -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per):
                arr = rng.integers(0, 256, (size, size) if mode == "L" else (size, size, 3)).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path, alarm):
    root = folder(tmp_path / "f")
    os.mkfifo(root / "test" / "a" / "9.png")
    with pytest.raises(RfbenchError, match="not a regular file"):
        imagefolder(str(root), DataOptions())


def test_16_bit_pngs_convert_exactly_or_are_refused(tmp_path):
    root = folder(tmp_path / "f")
    eight = np.arange(64, dtype=np.uint16).reshape(8, 8) * 3
    Image.fromarray(eight * 257).save(root / "train" / "a" / "0.png")  # an 8-bit image stored in 16 bits
    assert Image.open(root / "train" / "a" / "0.png").mode.startswith("I")
    splits = imagefolder(str(root), DataOptions())
    assert splits.train.x[0, 0].numpy().tolist() == eight.tolist()  # exact, nothing clipped to 255
    Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)).save(root / "train" / "a" / "0.png")
    with pytest.raises(RfbenchError, match="16-bit pixels .* without loss"):
        imagefolder(str(root), DataOptions())
    with pytest.raises(RfbenchError, match="floating-point"):
        to_8bit(Image.fromarray(np.zeros((2, 2), dtype=np.float32)))


def png16(arr: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG of ``arr`` (H×W or H×W×C samples), written by hand: IHDR, one zlib IDAT (filter 0), IEND."""
    h, w = arr.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def tiff16_rgb(arr: np.ndarray) -> bytes:
    """An uncompressed little-endian TIFF of the H×W×3 16-bit samples ``arr``, written by hand (one strip)."""
    h, w, _ = arr.shape
    data = arr.astype("<u2").tobytes()
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, 8 + 2 + 10 * 12 + 4), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, 8 + 2 + 10 * 12 + 4 + 6), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                 else struct.pack("<I", value)) for tag, kind, count, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16) + data


@pytest.mark.parametrize("kind", ["png-rgb", "png-rgba", "tiff-rgb"])
def test_16_bit_colour_images_convert_exactly_or_are_refused(tmp_path, kind):
    """PIL narrows 16-bit colour samples to their high bytes; rfbench keeps such an image only when that is exact."""
    root = folder(tmp_path / "f", mode="RGB")
    eight = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.uint16)
    suffix = ".tif" if kind == "tiff-rgb" else ".png"

    def write(samples: np.ndarray) -> Path:
        path = root / "train" / "a" / f"0{suffix}"
        (root / "train" / "a" / "0.png").unlink(missing_ok=True)
        if kind == "tiff-rgb":
            path.write_bytes(tiff16_rgb(samples))
        elif kind == "png-rgb":
            path.write_bytes(png16(samples, 2))
        else:
            path.write_bytes(png16(np.concatenate([samples, np.full((8, 8, 1), 65535, np.uint16)], axis=2), 6))
        return path

    write(eight * 257)  # an 8-bit image stored in 16 bits
    splits = imagefolder(str(root), DataOptions())
    assert splits.train.x[0].permute(1, 2, 0).numpy().tolist() == eight.tolist()
    path = write(eight * 257 + (np.arange(192).reshape(8, 8, 3) == 100))  # one sample off by one: 8 bits lose it
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), eight)  # what PIL alone makes of it: silently narrowed
    with pytest.raises(RfbenchError, match=f"image .*0{suffix} has 16-bit samples .* without loss .*multiple of 257.* "
                                           "convert the folder to 8-bit"):
        imagefolder(str(root), DataOptions())


def test_16_bit_gray_with_alpha_and_wide_colour_ppm_are_refused(tmp_path):
    """Layouts PIL narrows that rfbench cannot check sample by sample: one line naming the file and the bit depth."""
    root = folder(tmp_path / "f", mode="RGB")
    (root / "train" / "a" / "0.png").write_bytes(png16(np.full((8, 8, 2), 257 * 9, np.uint16), 4))
    with pytest.raises(RfbenchError, match=r"image .*0.png has 16-bit samples \(layout LA;16B\), which rfbench cannot"):
        imagefolder(str(root), DataOptions())
    (root / "train" / "a" / "0.png").unlink()
    (root / "train" / "a" / "0.ppm").write_bytes(b"P6 8 8 65535\n" + bytes(8 * 8 * 3 * 2))
    with pytest.raises(RfbenchError, match=r"image .*0.ppm has samples up to 65535 \(more than 8 bits\)"):
        imagefolder(str(root), DataOptions())


def test_a_ppm_with_maxval_0_is_one_line(tmp_path):
    root = folder(tmp_path / "f", mode="RGB")
    (root / "train" / "a" / "bad.ppm").write_bytes(b"P6 8 8 0\n" + bytes(192))
    with pytest.raises(RfbenchError, match="cannot decode image .*bad.ppm.*maxval"):
        imagefolder(str(root), DataOptions())


def _result(classes: list[str]) -> dict:
    k = len(classes)
    acc = [0.5] * k
    return {"classes": classes, "names": ["clean", "pgd", "worst_case"], "dataset": "imagefolder:$x$",
            "per_class": {"clean": acc, "pgd": acc, "worst_case": acc},
            "per_class_ci95": {"clean": [[0.4, 0.6]] * k, "worst_case": [[0.4, 0.6]] * k},
            "summary": {"worst_case": {"mean": 0.5, "worst": 0.5}}, "threat": {"eps": 0.1, "norm": "linf"},
            "confusion": {"worst_case": np.eye(k).tolist()}}


def test_class_names_are_never_markup(tmp_path):
    classes = [r"$\evil{$", "$x^2$", r"\textbf{a}", "plain"]
    save_figure(per_class_figure(_result(classes)), tmp_path / "a.png")
    fig = confusion_flow_figure(_result(classes))
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == classes
    save_figure(fig, tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
    # a class *folder* of that name reaches the result and its plots as written
    splits = imagefolder(str(folder(tmp_path / "f", classes=(r"$\evil{$", "plain"))), DataOptions())
    assert splits.test.classes == [r"$\evil{$", "plain"]
    fig = per_class_figure(_result(list(splits.test.classes)))
    assert r"$\evil{$" in [t.get_text() for t in fig.axes[0].get_xticklabels()]
    save_figure(fig, tmp_path / "c.png")


# -- checkpoints -----------------------------------------------------------------------
def test_a_zip_bomb_checkpoint_is_refused_before_allocation(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4 << 20)}, buf)  # 16 MiB of zeros
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="decompression bomb"):
        load_checkpoint(bomb)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    return train(TrainConfig(dataset="fashion-mnist", model="smallcnn", model_kwargs={"width": 0.25},
                             max_train_samples=64, val_per_class=2, steps=1, val_steps=1, epochs=1, batch_size=32,
                             device="cpu", out=str(out)), quiet=True)


def _mutate(state: dict, case: str) -> None:
    if case == "meta not a dict":
        state["meta"] = "x"
    elif case == "num_classes a string":
        state["meta"]["num_classes"] = "10"
    elif case == "train_counts short":
        state["meta"]["train_counts"] = [1, 2]
    elif case == "threat unknown key":
        state["meta"]["threat"] = {"norm": "linf", "eps": 0.1, "bogus": 1}
    elif case == "no model":
        del state["model"]
    elif case == "model value not a tensor":
        state["model"][next(iter(state["model"]))] = [1.0, 2.0]
    elif case == "model a list":
        state["model"] = [1, 2]


@pytest.mark.parametrize("case, fragment", [
    ("meta not a dict", "'meta' is a str"),
    ("num_classes a string", "num_classes is '10'"),
    ("train_counts short", "train_counts"),
    ("threat unknown key", "meta threat"),
    ("no model", "no 'model' weights"),
    ("model value not a tensor", "is a list, not a tensor"),
    ("model a list", "'model' must be a non-empty dict"),
])
def test_bad_run_checkpoints_are_one_line(run_dir, tmp_path, case, fragment):
    import shutil

    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    state = torch.load(bad / "checkpoint-best.pt", weights_only=True)
    _mutate(state, case)
    torch.save(state, bad / "checkpoint-best.pt")
    with pytest.raises(RfbenchError, match=fragment) as info:
        load_run_model(bad, "best")
    assert "\n" not in str(info.value)


def test_the_tiny_run_itself_loads(run_dir):
    model, info = load_run_model(run_dir, "best")
    assert info["meta"]["num_classes"] == 10


# -- the layout cache ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "garbage", "list", "directory", "huge", "bad entry"])
def test_an_unusable_layout_cache_is_ignored_with_one_warning(tmp_path, monkeypatch, caplog, alarm, kind):
    monkeypatch.setenv("RFBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "_warned_caches", set())
    path = tmp_path / "layouts.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "garbage":
        path.write_bytes(b"\x00{not json")
    elif kind == "list":
        path.write_text("[1, 2]")
    elif kind == "directory":
        path.mkdir()
    elif kind == "huge":
        path.write_text(" " * (runtime.MAX_LAYOUT_CACHE_BYTES + 1) + "{}")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    model(torch.zeros(1, 1, 8, 8))
    if kind == "bad entry":  # an entry of the right key with values of the wrong type: a miss, not a crash
        arch_probe = runtime.cached_channels_last(model, (2, 1, 8, 8), torch.device("cpu"))
        cache = {k: {"channels_last": "yes", "default_ms": "x"} for k in runtime.read_layout_cache(path)}
        path.write_text(__import__("json").dumps(cache))
        assert arch_probe[2] is False
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            choice, ms, cached = runtime.cached_channels_last(model, (2, 1, 8, 8), torch.device("cpu"))
            assert isinstance(choice, bool)
    warnings = [r for r in caplog.records if "ignoring the layout cache" in r.getMessage()]
    assert len(warnings) == (0 if kind == "bad entry" else 1)
    if kind != "directory":
        assert isinstance(runtime.read_layout_cache(path), dict) and path.is_file()  # replaced by a good cache


def test_a_legacy_format_checkpoint_declaring_huge_storages_is_refused(tmp_path):
    """The pre-zip format allocates each storage at its declared size before reading it: bounded by the file."""
    good = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(1000), "m": {"a": [1, 2]}}, good, _use_new_zipfile_serialization=False)
    assert load_checkpoint(good)["w"].shape == (1000,)
    data = good.read_bytes()
    assert b"M\xe8\x03" in data  # the pickled element count 1000 (BININT2)
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(data.replace(b"M\xe8\x03", b"J" + (1 << 28).to_bytes(4, "little"), 1))  # 2^28 floats: 1 GiB
    with pytest.raises(CheckpointError, match="declare 268435456 elements"):
        load_checkpoint(bomb)
