"""Out of CPU memory: the evaluation halves the batch like for a GPU, and what no halving absorbs is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from faultkit import assert_one_line_error
from test_oom import OOMAbove, _cfg

from rfbench.benchmark import eval as bench_eval
from rfbench.benchmark.cli import main
from rfbench.benchmark.eval import SampleFlags, evaluate

CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)"  # noqa: E501


class CPUOOMAbove(OOMAbove):
    def forward(self, x):
        if x.requires_grad and x.shape[0] > self.limit:
            self.raised += 1
            raise self.error(CPU_OOM)
        return self.model(x)


@pytest.mark.parametrize("error", [RuntimeError, MemoryError])
def test_cpu_oom_halves_the_batch_and_gives_the_same_result(fmnist, fmnist_cnn, tmp_path, error):
    plain = evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path / "plain")
    model = CPUOOMAbove(fmnist_cnn, limit=5, error=error)
    result = evaluate(model, fmnist, _cfg(), tmp_path / "oom")
    assert model.raised > 0 and result["provenance"]["oom_halvings"]
    assert result["per_class"] == plain["per_class"]
    a, b = SampleFlags.load(tmp_path / "plain" / "flags.npz"), SampleFlags.load(tmp_path / "oom" / "flags.npz")
    for key in ("clean_pred", "adv_pred", "ran", "pert", "done"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def _weights(tmp_path):
    from rfbench.models import create_model

    path = tmp_path / "w.pt"
    torch.save(create_model("smallcnn", num_classes=10, in_channels=1).state_dict(), path)
    return str(path)


def test_an_oom_no_halving_absorbs_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
    def out_of_memory(*a, **k):
        raise RuntimeError(CPU_OOM + "\nmore lines of the allocator's report")

    monkeypatch.setattr(bench_eval, "evaluate", out_of_memory)
    argv = ["eval", "--model", "smallcnn", "--weights", _weights(tmp_path), "--dataset", "fashion-mnist", "--n-per-class", "1",
            "--batch-size", "7",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "e")]
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "out of memory", "can't allocate memory", "--batch-size (now 7)")


def test_other_runtime_errors_still_propagate(tmp_path, monkeypatch):
    def bug(*a, **k):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(bench_eval, "evaluate", bug)
    argv = ["eval", "--model", "smallcnn", "--weights", _weights(tmp_path), "--dataset", "fashion-mnist",
            "--n-per-class", "1", "--device", "cpu",
            "--quiet", "--out", str(tmp_path / "e")]
    with pytest.raises(RuntimeError, match="a real bug"):
        main(argv)
