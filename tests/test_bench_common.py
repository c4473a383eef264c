"""perf/_common.py: the measured GEMM peak the benchmark tables divide by, and the CIFAR-10 subsets they time on."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import _common as C  # noqa: E402


def test_matmul_peak_is_a_positive_rate_and_shrinks_a_gemm_too_slow_to_repeat(monkeypatch):
    monkeypatch.setattr(C, "_GEMM_N", {})
    cpu = torch.device("cpu")
    assert C.matmul_peak(torch.float32, cpu, n=256, repeats=2) > 0
    assert C._GEMM_N == {}  # fast enough at the requested size: kept
    # every call "too slow": halved down to the floor of 128, and the size is remembered
    assert C.matmul_peak(torch.float32, cpu, n=512, repeats=1, max_call_s=0.0) > 0
    assert C._GEMM_N == {(torch.float32, "cpu", 512): 128}


def test_cifar_subset_extracts_the_first_images_of_each_class_in_one_forward_pass(tmp_path, monkeypatch):
    """A gzip stream seeks backwards by decompressing from the start again: the members must be read in archive
    order (extracting them in name order took 86 s instead of 3.6 s for the GPU run's 1,810 images)."""
    import gzip

    import pytest

    from rfbench.benchmark.data import cifar10_jpeg

    tar = cifar10_jpeg.archive_path()
    if not tar.exists():
        pytest.skip(f"{tar} not present")
    if not hasattr(gzip, "_GzipReader"):
        pytest.skip("this Python's gzip has no _GzipReader to count rewinds on")
    rewinds = []
    rewind = gzip._GzipReader._rewind
    monkeypatch.setattr(gzip._GzipReader, "_rewind", lambda self: (rewinds.append(1), rewind(self))[1])
    out = C.cifar_subset(3, 2, tar_path=tar, cache=tmp_path)
    assert len(rewinds) <= 1  # back to the start once, after the listing pass
    for split, k in (("train", 3), ("test", 2)):
        classes = sorted(p.name for p in (out / split).iterdir())
        assert len(classes) == 10
        for c in classes:
            assert len(list((out / split / c).iterdir())) == k
