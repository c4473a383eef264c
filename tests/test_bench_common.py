"""benchmarks/_common.py: the measured GEMM peak the benchmark tables divide by."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as C  # noqa: E402


def test_matmul_peak_is_a_positive_rate_and_shrinks_a_gemm_too_slow_to_repeat(monkeypatch):
    monkeypatch.setattr(C, "_GEMM_N", {})
    cpu = torch.device("cpu")
    assert C.matmul_peak(torch.float32, cpu, n=256, repeats=2) > 0
    assert C._GEMM_N == {}  # fast enough at the requested size: kept
    # every call "too slow": halved down to the floor of 128, and the size is remembered
    assert C.matmul_peak(torch.float32, cpu, n=512, repeats=1, max_call_s=0.0) > 0
    assert C._GEMM_N == {(torch.float32, "cpu", 512): 128}
