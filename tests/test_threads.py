"""CPU thread count: the rule max(1, min(default, cores - others)), explicit counts win, a real load is seen."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
import torch

from rfbench.benchmark.train import threads as T
from rfbench.core.errors import ConfigError


def test_the_rule_by_hand():
    assert T.fit_threads(2, 0) == 2 and T.fit_threads(2, 0.4) == 2  # idle: all cores
    assert T.fit_threads(2, 1) == 1 and T.fit_threads(2, 9) == 1  # loaded: never below one
    assert T.fit_threads(16, 5) == 11 and T.fit_threads(16, 5, default=8) == 8  # capped by PyTorch's default
    assert T.fit_threads(4, 2.6) == 1


def test_explicit_counts_win(monkeypatch):
    monkeypatch.setattr(T, "others_running", lambda: 0.0)
    c = T.choose_threads({"RFBENCH_THREADS": "3", "OMP_NUM_THREADS": "1"})
    assert (c.threads, c.rule) == (3, "RFBENCH_THREADS")
    assert T.choose_threads({"OMP_NUM_THREADS": "1"}).rule == "OMP_NUM_THREADS"
    assert T.choose_threads({}).threads == min(T.TORCH_DEFAULT, T.usable_cores())  # idle: PyTorch's own count
    with pytest.raises(ConfigError, match="RFBENCH_THREADS"):
        T.choose_threads({"RFBENCH_THREADS": "two"})
    monkeypatch.setattr(T, "others_running", lambda: 50.0)
    assert T.choose_threads({}).threads == 1


def test_apply_sets_torch_threads_on_cpu_only(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("RFBENCH_THREADS", "1")
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        c = T.apply_cpu_threads(torch.device("cpu"))
        assert c is not None and c.threads == 1 and torch.get_num_threads() == 1
        assert T.apply_cpu_threads(torch.device("meta")) is None
        # a count the program chose itself is kept (when RFBENCH_THREADS is not set)
        monkeypatch.delenv("RFBENCH_THREADS")
        monkeypatch.setattr(T, "TORCH_DEFAULT", 2)
        monkeypatch.setattr(T, "_last_set", None)
        torch.set_num_threads(3)
        kept = T.apply_cpu_threads(torch.device("cpu"))
        assert kept is not None and (kept.threads, kept.rule) == (3, "torch.set_num_threads")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def _spin(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


@pytest.mark.skipif(not __import__("os").path.exists("/proc/loadavg"), reason="needs /proc/loadavg (Linux)")
def test_busy_processes_are_counted():
    """Three busy-loop processes show up in the measured number of other runnable processes."""
    procs = [mp.get_context("fork").Process(target=_spin, args=(6.0,)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.5)
        others = T.others_running()
        assert others is not None and others >= 2  # the median of 9 samples; other jobs may add more
        assert T.fit_threads(2, others) == 1
    finally:
        for p in procs:
            p.terminate()
            p.join()
