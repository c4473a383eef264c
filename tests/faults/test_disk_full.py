"""Disk full, truncated and corrupt files, mismatched checkpoints.

Disk full is injected three ways: (1) the temporary file of an atomic write is
opened on ``/dev/full``, so the kernel itself answers ENOSPC (on ``write`` for
a large payload, on ``flush`` for a small one); (2) the same inside a real
training run, in process; (3) a real ``rfbench train`` subprocess writing to a
small tmpfs that a filler file has filled (in a private mount namespace made
with ``unshare``; skipped where the kernel does not allow it).  In every case
the error is one line naming the file, and the previous good file is intact
and loadable.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from faultkit import REPO, assert_one_line_error, assert_same_run, env, train_cmd

from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.trainer import train
from rfbench.core.errors import CheckpointError, RfbenchError
from rfbench.core.io import atomic, atomic_write_json, load_checkpoint, load_state_dict_into, read_json, save_checkpoint
from rfbench.models import create_model

HAS_DEV_FULL = os.path.exists("/dev/full")


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(name)``: from now on, atomic writes of files called ``name`` hit a full disk (``/dev/full``)."""
    names: set[str] = set()
    real = tempfile.mkstemp

    def mkstemp(prefix="", suffix="", dir=None):
        if any(prefix == f".{n}." for n in names):
            return os.open("/dev/full", os.O_WRONLY), os.path.join(dir, f"{prefix}devfull{suffix}")
        return real(prefix=prefix, suffix=suffix, dir=dir)

    monkeypatch.setattr(atomic, "tempfile", types.SimpleNamespace(mkstemp=mkstemp))
    return names.add


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(not HAS_DEV_FULL, reason="needs /dev/full")
@pytest.mark.parametrize("size", [100, 1_000_000], ids=["small-fails-on-flush", "large-fails-on-write"])
def test_enospc_is_one_line_and_keeps_the_previous_file(tmp_path, full_disk, size):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"good": 1})
    before = path.read_bytes()
    full_disk("result.json")
    with pytest.raises(RfbenchError) as exc:
        atomic_write_json(path, {"big": "x" * size})
    assert str(exc.value) == f"disk full while writing {path}; the previous version of that file is intact"
    assert isinstance(exc.value.__cause__, OSError) and exc.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == before and read_json(path) == {"good": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


@pytest.mark.skipif(not HAS_DEV_FULL, reason="needs /dev/full")
def test_enospc_on_a_checkpoint_keeps_the_previous_checkpoint_loadable(tmp_path, full_disk):
    path = tmp_path / "checkpoint-last.pt"
    good = {"model": {"w": torch.arange(6.0)}, "epoch": 1}
    save_checkpoint(path, good)
    full_disk("checkpoint-last.pt")
    with pytest.raises(RfbenchError, match="disk full while writing .*checkpoint-last.pt"):
        save_checkpoint(path, {"model": {"w": torch.zeros(1_000_000)}, "epoch": 2})
    back = load_checkpoint(path)
    assert back["epoch"] == 1 and torch.equal(back["model"]["w"], good["model"]["w"])


@pytest.mark.skipif(not HAS_DEV_FULL, reason="needs /dev/full")
def test_training_on_a_full_disk_stops_cleanly_and_resumes_exactly(tmp_path, full_disk):
    tiny: dict[str, Any] = dict(max_train_samples=160, val_per_class=5, steps=1, val_steps=1, batch_size=32, optimizer="adam",
                lr=1e-3, weight_decay=0.0, device="cpu", seed=5, model_kwargs={"width": 0.25}, checkpoint_every=2)
    straight = train(TrainConfig(**tiny, epochs=2, out=str(tmp_path / "straight")), quiet=True)
    out = tmp_path / "run"
    train(TrainConfig(**tiny, epochs=1, out=str(out)), quiet=True)
    before = _sha(out / "checkpoint-last.pt")
    full_disk("checkpoint-last.pt")
    with pytest.raises(RfbenchError) as exc:
        train(TrainConfig(**tiny, epochs=2, out=str(out)), quiet=True)
    assert str(exc.value) == (f"disk full while writing {out / 'checkpoint-last.pt'}; "
                              "the previous version of that file is intact")
    assert _sha(out / "checkpoint-last.pt") == before and load_checkpoint(out / "checkpoint-last.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))
    atomic.tempfile = tempfile  # space freed
    assert_same_run_epochs(train(TrainConfig(**tiny, epochs=2, out=str(out)), quiet=True), straight)


def assert_same_run_epochs(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a / "checkpoint-last.pt"), load_checkpoint(b / "checkpoint-last.pt")
    assert sa["epoch"] == sb["epoch"] == 2
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sb["model"])
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(sa["history"]) == strip(sb["history"])


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as d:
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(d)}"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs in a user namespace here")
def test_real_full_tmpfs_during_rfbench_train(tmp_path, reference_run):
    """A real ENOSPC from the kernel in a real subprocess: stop with one line, keep the checkpoint, resume to the same run."""
    mnt, work = tmp_path / "mnt", tmp_path / "work"
    mnt.mkdir()
    work.mkdir()
    run = mnt / "run"
    py = shlex.join([sys.executable, "-m", "rfbench.benchmark.cli"])
    first = shlex.join(train_cmd(run, "--epochs", "1"))
    again = shlex.join(train_cmd(run))
    script = f"""
mount -t tmpfs -o size=3m tmpfs {mnt} || exit 90
cd {shlex.quote(str(work))}
{py} {first} 2> stderr-1.txt; echo $? > rc-1
cp -a {run} after-1
avail=$(df --output=avail -B1 {mnt} | tail -1)
head -c $((avail - 65536)) /dev/zero > {mnt}/filler 2>/dev/null
{py} {again} 2> stderr-2.txt; echo $? > rc-2
cp -a {run} after-2
rm {mnt}/filler
{py} {again} 2> stderr-3.txt; echo $? > rc-3
cp -a {run} after-3
"""
    e = env()
    e["PATH"] = f"{Path(sys.executable).parent}:{e.get('PATH', '')}"
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], env=e,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr
    rc = {k: int((work / f"rc-{k}").read_text()) for k in (1, 2, 3)}
    assert rc[1] == 0, (work / "stderr-1.txt").read_text()
    assert rc[2] == 2, (work / "stderr-2.txt").read_text()
    assert_one_line_error((work / "stderr-2.txt").read_text(),
                          f"disk full while writing {run / 'checkpoint-last.pt'}; the previous version of that file is intact")
    assert _sha(work / "after-2" / "checkpoint-last.pt") == _sha(work / "after-1" / "checkpoint-last.pt")
    assert load_checkpoint(work / "after-2" / "checkpoint-last.pt")["epoch"] == 1
    assert not list((work / "after-2").glob(".*.tmp"))
    assert rc[3] == 0, (work / "stderr-3.txt").read_text()
    assert_same_run(work / "after-3", reference_run.out)


# -- truncated, corrupt and mismatched checkpoints ------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    model = create_model("smallcnn", 10, 1, [0.5], [0.25], width=0.25)
    save_checkpoint(d / "good.pt", {"model": model.state_dict(), "epoch": 3})
    save_checkpoint(d / "good.safetensors", model.state_dict())
    return d, model


DAMAGE = ["truncated-half", "truncated-10-bytes", "empty", "text", "flipped-bytes"] + [f"garbage-{i}" for i in range(8)]


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_corrupt_checkpoints_say_corrupt_file(saved, tmp_path, damage, fmt):
    src = saved[0] / f"good.{fmt}"
    data = src.read_bytes()
    if damage.startswith("garbage-"):  # seeded random bytes, some starting like a pickle or a zip file
        rng = random.Random(damage)
        head = [b"", b"\x80\x02", b"PK\x03\x04", b"\x80\x04\x95"][int(damage[-1]) % 4]
        bad = head + rng.randbytes(rng.randrange(1, 4096))
    else:
        bad = {"truncated-half": data[: len(data) // 2], "truncated-10-bytes": data[:10], "empty": b"",
               "text": b"model: not a checkpoint\n",
               "flipped-bytes": data[:64] + bytes(b ^ 0xFF for b in data[64:512]) + data[512:]}[damage]
    path = tmp_path / f"ckpt.{fmt}"
    path.write_bytes(bad)
    with pytest.raises(CheckpointError) as exc:
        load_state_dict_into(saved[1], load_checkpoint(path))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"corrupt file {path}"), msg


def test_corrupt_json_says_corrupt_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_text('{"per_class": [0.1, 0.')
    with pytest.raises(RfbenchError, match=rf"^corrupt file {path}: not valid JSON"):
        read_json(path)


def test_mismatched_checkpoint_gets_a_summary_of_missing_unexpected_and_shape_keys(saved):
    d, _ = saved
    state = load_checkpoint(d / "good.pt")["model"]
    wider = create_model("smallcnn", 10, 1, [0.5], [0.25], width=0.5)
    with pytest.raises(CheckpointError) as exc:
        load_state_dict_into(wider, state, source="w.pt")
    msg = str(exc.value)
    assert msg.startswith("w.pt does not match the model: wrong shapes: ") and "checkpoint (" in msg and "vs model (" in msg
    assert "missing" not in msg and "unexpected" not in msg
    narrow = create_model("smallcnn", 10, 1, [0.5], [0.25], width=0.25)
    edited = {k: v for k, v in state.items() if not k.startswith("head.")}
    edited["extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as exc:
        load_state_dict_into(narrow, edited, source="w.pt")
    msg = str(exc.value)
    assert "missing keys: head." in msg and "unexpected keys: extra.weight" in msg
    assert "\n" not in msg


def test_mismatched_init_checkpoint_through_the_cli(saved, tmp_path, capsys):
    from rfbench.benchmark.cli import main

    d, _ = saved
    code = main(train_cmd(tmp_path / "run", "--init", str(d / "good.pt"), "--epochs", "1")[:-1] + ["model_kwargs.width=0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert_one_line_error(err, f"init checkpoint {d / 'good.pt'} does not match the model: wrong shapes:")


def test_corrupt_checkpoint_last_on_resume_through_the_cli(saved, tmp_path, capsys):
    from rfbench.benchmark.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint-last.pt").write_bytes((saved[0] / "good.pt").read_bytes()[:300])
    assert main(train_cmd(out, "--epochs", "1")) == 2
    assert_one_line_error(capsys.readouterr().err, f"corrupt file {out / 'checkpoint-last.pt'}")


assert REPO.is_dir()
