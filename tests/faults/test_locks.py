"""One writer per output directory (``rfbench/core/io/lock.py``), and bad ``--out`` values answered in one line."""

from __future__ import annotations

import os
import signal

import pytest
from faultkit import TRAIN_SMALL as TRAIN
from faultkit import assert_one_line_error, hold_lock

from rfbench.benchmark.cli import main
from rfbench.core.io.lock import DirectoryLockedError, exclusive_dir


def hold(path):
    return hold_lock(path, "rfbench-train-holder")


def test_second_writer_is_refused_naming_the_holder_and_a_sigkilled_lock_is_free(tmp_path, capsys):
    out = tmp_path / "run"
    proc = hold(out)
    try:
        assert main(TRAIN + ["--out", str(out)]) == 2
        assert_one_line_error(capsys.readouterr().err, f"pid {proc.pid}", "in use", "rfbench-train-holder")
        with pytest.raises(DirectoryLockedError):
            with exclusive_dir(out):
                pass
        assert not (out / "config.yaml").exists()  # the refused train wrote nothing
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with exclusive_dir(out) as d:  # the lock died with its holder
        assert d == out


@pytest.mark.parametrize("bad", ["file", "", "/proc/rfbench-out", "readonly"])
def test_bad_out_is_one_line(tmp_path, capsys, bad):
    if bad == "file":
        target = tmp_path / "f"
        target.write_text("x")
        want = "not a directory"
    elif bad == "readonly":
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target, want = ro / "out", "cannot write"
    else:
        target, want = bad, ("empty" if not bad else "cannot write")
    assert main(TRAIN + ["--out", str(target)]) == 2
    assert_one_line_error(capsys.readouterr().err, want)
