"""Out of memory: the evaluation halves the batch (CPU as for a GPU), and what no halving absorbs is one line.

Training never halves (its batch size is part of the result): out of CPU or device memory there is one
line naming where, the checkpoint that holds the last saved state and ``--batch-size``, and the same
command resumes from that checkpoint to the uninterrupted run's result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from faultkit import BATCH, assert_one_line_error, train_cmd
from test_oom import OOMAbove, _cfg

from rfbench.benchmark import eval as bench_eval
from rfbench.benchmark.cli import main
from rfbench.benchmark.eval import SampleFlags, evaluate
from rfbench.benchmark.train import trainer
from rfbench.core.io import load_checkpoint

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


# -- training: one line, never a halved batch (that would change the run's result), and the run resumes ----------------
TRAIN_OOMS = {
    "cpu-allocator": lambda: RuntimeError(CPU_OOM + "\nmore lines of the allocator's report"),
    "cpu-not-enough": lambda: RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1073741824 "
                                           "bytes."),
    "cuda": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB "
                                                "total capacity; 77.90 GiB already allocated)"),
    "python": MemoryError,
}


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The tiny 2-epoch training run, uninterrupted: what a run resumed after running out of memory must equal."""
    out = tmp_path_factory.mktemp("oom-reference") / "run"
    assert main(train_cmd(out, "--epochs", "2")) == 0
    return out


@pytest.mark.parametrize("kind", TRAIN_OOMS)
def test_training_out_of_memory_is_one_line_and_the_same_command_resumes(uninterrupted_run, tmp_path, monkeypatch,
                                                                         capsys, kind):
    out = tmp_path / "run"
    real_step = trainer.Trainer._step

    def step(self, batch):
        if (batch.epoch, batch.index) == (1, 1):  # epoch 2, batch 2: after the epoch-1 checkpoint
            raise TRAIN_OOMS[kind]()
        return real_step(self, batch)

    monkeypatch.setattr(trainer.Trainer, "_step", step)
    capsys.readouterr()
    assert main(train_cmd(out, "--epochs", "2")) == 2
    last = out / "checkpoint-last.pt"
    assert_one_line_error(capsys.readouterr().err, "out of memory at epoch 2, batch 2 (",
                          f"{last} holds the last saved state", "run the same command again",
                          f"lower --batch-size (now {BATCH}", "another --out or --force")
    saved = load_checkpoint(last)
    assert saved["epoch"] == 1 and saved.get("partial") is None  # the last finished epoch's state, intact
    monkeypatch.undo()
    assert main(train_cmd(out, "--epochs", "2")) == 0  # the advice works: the same command resumes and finishes
    capsys.readouterr()
    got, want = load_checkpoint(last), load_checkpoint(uninterrupted_run / "checkpoint-last.pt")
    assert got["epoch"] == want["epoch"] == 2
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])


def test_training_out_of_memory_before_any_save_says_nothing_was_saved(tmp_path, monkeypatch, capsys):
    def step(self, batch):
        raise TRAIN_OOMS["cuda"]()

    monkeypatch.setattr(trainer.Trainer, "_step", step)
    out = tmp_path / "run"
    assert main(train_cmd(out, "--epochs", "1")) == 2
    assert_one_line_error(capsys.readouterr().err, "out of memory at epoch 1, batch 1 (CUDA out of memory.",
                          "nothing was saved yet", f"lower --batch-size (now {BATCH}")
    assert not (out / "checkpoint-last.pt").exists()
