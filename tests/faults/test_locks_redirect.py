"""Locks that cannot be redirected or bypassed, and calibrations written as one group.

A planted symbolic link in place of a lock file is refused in one line (it is
never followed); two paths to one directory take one lock; ``RANK`` alone does
not skip the lock; a bad ``WORLD_SIZE``/``RANK``/``MASTER_ADDR`` is one line;
``calibrate`` refuses a run directory as ``--out``, holds its lock for the whole
command, removes stale temporary files, and a ``calibration.pt`` whose manifest
(``calibration.json``) is missing or from another calibration is refused.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from faultkit import TRAIN_SMALL as TRAIN
from faultkit import assert_one_line_error, hold_lock

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval.calibrate import (
    REPORT_FILE,
    STATE_FILE,
    CalibrationConfig,
    CalibrationResult,
    load_calibration,
    save_calibration,
)
from rfbench.core.errors import CheckpointError, RfbenchError
from rfbench.core.io.lock import DirectoryLockedError, exclusive_dir, exclusive_leaderboard, lock_path
from rfbench.core.launch import Launch, launch_from_env

DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def holder():
    procs = []

    def hold(path):
        procs.append(proc := hold_lock(path, "rfbench-holder"))
        return proc

    yield hold
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def clean_env(monkeypatch):
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / ".out.rfbench.lock").symlink_to(precious)
    assert main(TRAIN + ["--out", str(parent / "out")]) == 2
    assert_one_line_error(capsys.readouterr().err, "symbolic link", ".out.rfbench.lock")
    assert precious.read_text() == "keep me\n"
    with pytest.raises(RfbenchError, match="symbolic link"):
        with exclusive_dir(parent / "out"):
            pass
    assert precious.read_text() == "keep me\n"
    assert not (parent / "out").exists()


def test_a_dangling_lock_link_creates_nothing(tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    target = tmp_path / "created-by-the-link"
    (parent / ".out.rfbench.lock").symlink_to(target)
    with pytest.raises(RfbenchError, match="symbolic link"):
        with exclusive_dir(parent / "out"):
            pass
    assert not target.exists()


def test_the_leaderboard_lock_refuses_a_link_too(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    (tmp_path / "leaderboards").mkdir()
    (tmp_path / "leaderboards" / "._writer.rfbench.lock").symlink_to(precious)
    with pytest.raises(RfbenchError, match="symbolic link"):
        with exclusive_leaderboard(tmp_path):
            pass
    assert precious.read_text() == "keep me\n"


def test_a_fifo_lock_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / ".out.rfbench.lock")
    with pytest.raises(RfbenchError, match="not a regular file"):
        with exclusive_dir(tmp_path / "out"):
            pass


def test_a_symlinked_out_takes_the_lock_of_the_real_directory(tmp_path, holder, capsys, clean_env):
    real = tmp_path / "real"
    real.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(real, target_is_directory=True)
    assert lock_path((alias).resolve()) == tmp_path / ".real.rfbench.lock"
    proc = holder(real)
    assert main(TRAIN + ["--out", str(alias)]) == 2
    assert_one_line_error(capsys.readouterr().err, f"pid {proc.pid}", "in use")
    with pytest.raises(DirectoryLockedError):
        with exclusive_dir(alias):
            pass
    assert not (real / "config.yaml").exists()


def test_rank_alone_does_not_skip_the_lock(tmp_path, holder, capsys, clean_env):
    out = tmp_path / "run"
    proc = holder(out)
    clean_env.setenv("RANK", "1")
    assert main(TRAIN + ["--out", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, f"pid {proc.pid}", "in use")
    assert not (out / "config.yaml").exists()


@pytest.mark.parametrize("env, fragments", [
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}, ("RANK is not set", "WORLD_SIZE=2")),
    ({"WORLD_SIZE": "abc"}, ("WORLD_SIZE='abc'", "not an integer")),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500"}, ("MASTER_ADDR is not set",)),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, ("RANK=2", "out of range", "[0, 1]")),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "x"}, ("MASTER_PORT='x'",)),
    ({"WORLD_SIZE": "-3"}, ("WORLD_SIZE=-3", "out of range")),
])
def test_bad_launch_variables_are_one_line(tmp_path, capsys, clean_env, env, fragments):
    for k, v in env.items():
        clean_env.setenv(k, v)
    assert main(TRAIN + ["--out", str(tmp_path / "run")]) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert not (tmp_path / "run").exists()


def test_launch_reading():
    assert launch_from_env({}) == Launch()
    assert launch_from_env({"RANK": "3"}) == Launch()  # no launch in force: a stray RANK means nothing
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "5"}) == Launch()
    got = launch_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "2"})
    assert got == Launch(4, 2, 1) and got.distributed and not got.main


# -- calibration ------------------------------------------------------------------------
def _result(bias: float) -> CalibrationResult:
    acc = {"clean_acc": [0.5, 0.5], "robust_acc": [0.25, 0.25]}
    return CalibrationResult("bias", torch.ones(2), torch.tensor([0.0, bias]), acc, acc, [])


def test_a_calibration_is_one_group(tmp_path):
    cfg = CalibrationConfig(eps=0.1, alpha=0.01, steps=1, norm="linf")
    out = tmp_path / "calib"
    save_calibration(out, _result(0.5), tmp_path / "run", "best", cfg)
    assert load_calibration(out)["bias"][1].item() == 0.5
    report = (out / REPORT_FILE).read_bytes()
    # a second calibration killed between its two writes: its .pt beside the first one's report
    save_calibration(out, _result(0.75), tmp_path / "run", "best", cfg)
    (out / REPORT_FILE).write_bytes(report)
    with pytest.raises(CheckpointError, match="different calibrations"):
        load_calibration(out)
    # killed before the first report was ever written
    (out / REPORT_FILE).unlink()
    with pytest.raises(CheckpointError, match="did not finish"):
        load_calibration(out / STATE_FILE)


def test_calibrate_refuses_its_run_as_out(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-best.pt").write_bytes(b"")
    assert main(["calibrate", "--run", str(run), "--out", str(run), "--device", "cpu"]) == 2
    assert_one_line_error(capsys.readouterr().err, "is the run directory itself")
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint-last.pt").write_bytes(b"")
    assert main(["calibrate", "--run", str(run), "--out", str(other), "--device", "cpu"]) == 2
    assert_one_line_error(capsys.readouterr().err, "holds a training run")
    assert not (run / STATE_FILE).exists() and not (other / STATE_FILE).exists()


def test_a_second_calibrate_stops_before_any_work(tmp_path, holder, capsys):
    out = tmp_path / "calib"
    proc = holder(out)
    # the run does not even exist: the refusal comes before the run is read, not after a fit
    assert main(["calibrate", "--run", str(tmp_path / "missing"), "--out", str(out), "--device", "cpu"]) == 2
    assert_one_line_error(capsys.readouterr().err, f"pid {proc.pid}", "calibration directory")


def test_calibrate_removes_stale_temps_and_writes_a_checked_group(tmp_path):
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.benchmark.train.trainer import train

    run = train(TrainConfig(dataset="fashion-mnist", model="smallcnn", model_kwargs={"width": 0.25},
                            max_train_samples=64, val_per_class=2, steps=1, val_steps=1, epochs=1, batch_size=32,
                            device="cpu", out=str(tmp_path / "run")), quiet=True)
    out = tmp_path / "calib"
    out.mkdir()
    stale = out / ".calibration.pt.abcd1234.tmp"  # what a calibrate killed mid-write leaves
    stale.write_bytes(b"partial")
    assert main(["calibrate", "--run", str(run), "--out", str(out), "--device", "cpu", "--steps", "1",
                 "--targets", "1", "--rounds", "1", "--grid", "3", "--passes", "1"]) == 0
    assert not stale.exists()
    import json

    report = json.loads((out / REPORT_FILE).read_text())
    import hashlib

    assert report["state_sha256"] == hashlib.sha256((out / STATE_FILE).read_bytes()).hexdigest()
    assert load_calibration(out)["method"] == "bias"


def test_which_on_a_calibration_of_another_checkpoint_is_refused(tmp_path, capsys):
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.benchmark.train.trainer import train

    run = train(TrainConfig(dataset="fashion-mnist", model="smallcnn", model_kwargs={"width": 0.25},
                            max_train_samples=64, val_per_class=2, steps=1, val_steps=1, epochs=1, batch_size=32,
                            device="cpu", out=str(tmp_path / "run")), quiet=True)
    out = tmp_path / "calib"
    assert main(["calibrate", "--run", str(run), "--which", "best", "--out", str(out), "--device", "cpu", "--steps",
                 "1", "--targets", "1", "--rounds", "1", "--grid", "3", "--passes", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--which", "last", "--n-per-class", "1", "--attack", "fgsm", "--device",
                 "cpu", "--quiet", "--out", str(tmp_path / "e")]) == 2
    assert_one_line_error(capsys.readouterr().err, "calibration of the run's 'best' checkpoint", "--which last")
