"""Output files follow the umask, and durations come from a monotonic clock (a stepped wall clock changes nothing)."""

from __future__ import annotations

import os
import stat
import time

import pytest

from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.trainer import train
from rfbench.core.io import atomic_write_json, atomic_write_text, save_checkpoint
from rfbench.core.io.atomic import current_umask
from rfbench.core.io.lock import exclusive_dir, lock_path


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_to(mask: int) -> None:
        os.umask(mask)

    yield set_to
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open(path, "w") gives: the reference
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "a.json", {"a": 1})
    save_checkpoint(tmp_path / "a.pt", {"x": 1})
    with exclusive_dir(tmp_path / "out"):
        pass
    for path in (tmp_path / "a.txt", tmp_path / "a.json", tmp_path / "a.pt", lock_path(tmp_path / "out")):
        assert _mode(path) == _mode(plain) == 0o666 & ~mask, path


def test_a_training_run_is_readable_by_others_under_umask_022(tmp_path, umask):
    umask(0o022)
    out = train(TrainConfig(dataset="fashion-mnist", model="smallcnn", model_kwargs={"width": 0.25},
                            max_train_samples=64, val_per_class=2, steps=1, val_steps=1, epochs=1, batch_size=32,
                            device="cpu", out=str(tmp_path / "run")), quiet=True)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(_mode(p) == 0o644 for p in files), {p.name: oct(_mode(p)) for p in files}


def test_a_wall_clock_stepped_back_during_training_gives_positive_durations(tmp_path, monkeypatch):
    """The wall clock goes back one hour at every reading: durations must not notice."""
    real = time.time
    calls = [0]

    def stepping_back() -> float:
        calls[0] += 1
        return real() - 3600.0 * calls[0]

    monkeypatch.setattr(time, "time", stepping_back)
    out = train(TrainConfig(dataset="fashion-mnist", model="smallcnn", model_kwargs={"width": 0.25},
                            max_train_samples=64, val_per_class=2, steps=1, val_steps=1, epochs=2, batch_size=32,
                            device="cpu", out=str(tmp_path / "run")), quiet=True)
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_seconds_total"] >= 0
    for line in (out / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "seconds" in record:
            assert 0 <= record["seconds"] < 600, record


def test_a_wall_clock_stepped_back_during_an_evaluation_gives_positive_durations(tmp_path, monkeypatch):
    """The same for the evaluation: its wall time, attack time and per-attack seconds come from the monotonic clock."""
    import json

    import torch

    import rfbench

    real = time.time
    calls = [0]

    def stepping_back() -> float:
        calls[0] += 1
        return real() - 3600.0 * calls[0]

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(6, 1, 4, 4)
    monkeypatch.setattr(time, "time", stepping_back)
    rfbench.evaluate(model, x, model(x).argmax(1), attacks=["fgsm", "pgd"], classes=["a", "b", "c"], out=tmp_path / "r",
                     eps=0.05, device="cpu", quiet=True, batch_size=2)
    prov = json.loads((tmp_path / "r" / "result.json").read_text())["provenance"]
    assert 0 <= prov["wall_time_s"] < 600 and 0 <= prov["attack_time_s"] < 600
    assert prov["attack_rates"] and all(0 <= r["seconds"] < 600 for r in prov["attack_rates"].values())
