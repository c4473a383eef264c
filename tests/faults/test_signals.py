"""SIGINT and SIGTERM stop a real ``rfbench train`` cleanly, with a resumable state and a resume hint.

The signal is sent to the subprocess in the middle of an epoch (after a chosen
number of trained batches) or during a validation.  The process must finish
its batch, save, and exit with 128 + signum (130 for SIGINT, 143 for SIGTERM)
and one line saying how to resume; running the same command again must give
the uninterrupted run's result bit for bit, redoing nothing.
"""

from __future__ import annotations

import os
import signal

import pytest
from faultkit import (
    N_BATCHES,
    assert_one_line_error,
    assert_same_run,
    check_training_trace,
    read_trace,
    segment_of,
    start,
    train_cmd,
    wait_until,
)

from rfbench.core.io import load_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("signum, after_batches", [(signal.SIGINT, 4), (signal.SIGTERM, 13)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_resume_equals_uninterrupted(tmp_path, reference_run, signum, after_batches):
    out, trace = tmp_path / "run", tmp_path / "trace.txt"
    proc = start(train_cmd(out), cwd=tmp_path, trace=trace)
    seg = lambda: segment_of(trace, proc.pid)
    assert wait_until(lambda: len(seg().batches) >= after_batches, proc), proc.stderr
    os.kill(proc.pid, signum)
    assert proc.wait() == 128 + signum, proc.stderr
    stopped_at = len(seg().batches)
    epoch, batch = divmod(stopped_at - 1, N_BATCHES)
    line = assert_one_line_error(proc.stderr, f"stopped by {signal.Signals(signum).name}",
                                 f"at epoch {epoch + 1}, batch {batch + 1}", str(out / "checkpoint-last.pt"),
                                 "Resume by running the same command again")
    state = load_checkpoint(out / "checkpoint-last.pt")
    assert state["epoch"] == epoch and state["partial"]["batches_done"] == batch + 1, line
    assert seg().saved[-1] == (stopped_at, 1)  # the state of the very last trained batch

    resumed = start(train_cmd(out), cwd=tmp_path, trace=trace)
    assert resumed.wait() == 0, resumed.stderr
    report = check_training_trace(read_trace(trace), reference_run.batches)
    assert report.batches_redone == 0 and report.validations_redone == 0  # a clean stop loses nothing
    assert_same_run(out, reference_run.out)


@pytest.mark.slow
def test_sigterm_during_validation_stops_at_the_epoch_end(tmp_path, reference_run):
    """A signal that arrives while validating stops after the epoch-end save, not one batch into the next epoch."""
    out, trace = tmp_path / "run", tmp_path / "trace.txt"
    proc = start(train_cmd(out), cwd=tmp_path, trace=trace, RFBENCH_FAULT_SLOW_VALIDATION="1")
    seg = lambda: segment_of(trace, proc.pid)
    assert wait_until(lambda: seg().validating, proc), proc.stderr
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait() == 128 + signal.SIGTERM, proc.stderr
    assert_one_line_error(proc.stderr, "stopped by SIGTERM at the end of epoch 1", "Resume by running the same command")
    assert len(seg().batches) == N_BATCHES and seg().saved[-1] == (N_BATCHES, 0)
    resumed = start(train_cmd(out), cwd=tmp_path, trace=trace)
    assert resumed.wait() == 0, resumed.stderr
    report = check_training_trace(read_trace(trace), reference_run.batches)
    assert report.batches_redone == 0 and report.validations_redone == 0
    assert_same_run(out, reference_run.out)
