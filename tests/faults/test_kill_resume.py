"""SIGKILL real ``rfbench`` subprocesses at random points, resume, and prove that nothing was lost.

A kill is the one fault a process cannot react to: what survives is only what
was durably on disk.  Each test kills the same command several times at
seeded random points (including in the middle of a checkpoint write and just
after a validation), checks after every kill that every file on disk is whole,
then runs the command to completion and compares with an uninterrupted run:
bit-identical weights, optimiser state, best checkpoint and logs, and a trace
proving that no saved work (batch, validation) was done twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
from faultkit import (
    CHECKPOINT_EVERY,
    EPOCHS,
    EVAL_BATCHES,
    EVAL_LABELS,
    N_BATCHES,
    assert_same_eval,
    assert_same_run,
    check_eval_trace,
    check_training_trace,
    eval_cmd,
    read_trace,
    segment_of,
    start,
    train_cmd,
    wait_until,
)

from rfbench.core.io import load_checkpoint

KILL_SEED = 2024
# where each kill lands: a seeded random pause after a batch; in the middle of a checkpoint write
# (made slow so the kill is certain to hit it); right after a validation (the best/log/last writes)
KILL_MODES = ("after-batch", "mid-write", "after-validation")


def _assert_files_whole(out) -> dict:
    """Everything a reader can see in ``out`` is complete; returns checkpoint-last's progress."""
    for line in (out / "log.jsonl").read_text().splitlines() if (out / "log.jsonl").exists() else []:
        json.loads(line)
    if (out / "checkpoint-best.pt").exists():
        load_checkpoint(out / "checkpoint-best.pt")
    if not (out / "checkpoint-last.pt").exists():
        return {}
    state = load_checkpoint(out / "checkpoint-last.pt")
    partial = state["partial"]
    return {"epoch": state["epoch"], "batches_done": partial["batches_done"] if partial else None}


@pytest.mark.slow
def test_train_killed_three_times_resumes_to_the_uninterrupted_result(tmp_path, reference_run):
    rng = random.Random(KILL_SEED)
    total = EPOCHS * N_BATCHES
    targets = sorted(rng.sample(range(2, total - 2), len(KILL_MODES)))
    out, trace = tmp_path / "run", tmp_path / "trace.txt"
    kills = []
    for target, mode in zip(targets, KILL_MODES):
        proc = start(train_cmd(out), cwd=tmp_path, trace=trace,
                     **({"RFBENCH_FAULT_SLOW_WRITE": "1"} if mode == "mid-write" else {}))
        seg = lambda: segment_of(trace, proc.pid)
        progress = lambda: seg().start[0] + len(seg().batches) if seg().start else -1
        assert wait_until(lambda: progress() >= target, proc), proc.stderr
        if mode == "after-batch":
            time.sleep(rng.uniform(0.0, 0.3))
        elif mode == "mid-write":
            n_half = len(seg().half_written)
            assert wait_until(lambda: len(seg().half_written) > n_half, proc), proc.stderr
        else:
            n_vals = len(seg().vals)
            assert wait_until(lambda: len(seg().vals) > n_vals, proc), proc.stderr
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the process finished before it could be killed"
        on_disk = _assert_files_whole(out)
        s = seg()
        kills.append({"mode": mode, "after_batches": s.start[0] + len(s.batches), "on_disk": on_disk,
                      "temp_files": sorted(p.name for p in out.glob(".*.tmp"))})
        if mode == "mid-write":  # the half-written temporary file is there, the real file is the previous save
            assert kills[-1]["temp_files"], "the kill should have left the half-written temporary file"
            durable = s.saved[-1] if s.saved else s.start
            assert (on_disk["epoch"] * N_BATCHES + (on_disk["batches_done"] or 0)) == durable[0]

    final = start(train_cmd(out), cwd=tmp_path, trace=trace)
    assert final.wait() == 0, final.stderr
    report = check_training_trace(read_trace(trace), reference_run.batches)
    assert_same_run(out, reference_run.out)
    assert report.processes == len(KILL_MODES) + 1
    assert report.batches_redone <= len(KILL_MODES) * CHECKPOINT_EVERY  # only work since the last save, once per kill
    assert not list(out.glob(".*.tmp")), "the resumed run should remove the temporary files of killed writes"
    print(f"\nkills: {kills}\nredo: {report}")


EVAL_KILL_MODES = ("mid-batch", "mid-write", "after-save")


@pytest.mark.slow
def test_eval_killed_three_times_resumes_to_the_uninterrupted_result(tmp_path, reference_run, reference_eval):
    rng = random.Random(KILL_SEED + 1)
    targets = sorted(rng.sample(range(1, EVAL_BATCHES - 1), len(EVAL_KILL_MODES)))
    out, trace = tmp_path / "eval", tmp_path / "trace.txt"
    kills = []
    for target, mode in zip(targets, EVAL_KILL_MODES):
        proc = start(eval_cmd(reference_run.out, out), cwd=tmp_path, trace=trace,
                     **({"RFBENCH_FAULT_SLOW_WRITE": "1"} if mode == "mid-write" else {}))
        seg = lambda: segment_of(trace, proc.pid)
        if mode == "mid-batch":  # between two attacks of the target batch
            label = EVAL_LABELS[rng.randrange(1, len(EVAL_LABELS))]
            assert wait_until(lambda: (label, target) in seg().eval_attacks, proc), proc.stderr
        elif mode == "mid-write":  # half of the flag file written, the process paused before the rest
            assert wait_until(lambda: bool(seg().eval_saving) and target in seg().eval_saving[-1]
                              and len(seg().half_written) == len(seg().eval_saving), proc), proc.stderr
        else:  # a seeded random pause after the target batch is durable
            assert wait_until(lambda: any(target in s for s in seg().eval_saved), proc), proc.stderr
            time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the evaluation finished before it could be killed"
        from rfbench.benchmark.eval.flags import SampleFlags

        held = SampleFlags.load(out / "flags.npz") if (out / "flags.npz").exists() else None  # whole, never torn
        kills.append({"mode": mode, "target_batch": target, "samples_done": int(held.done.sum()) if held else 0,
                      "temp_files": sorted(p.name for p in out.glob(".*.tmp"))})
        assert not (out / "result.json").exists()
    final = start(eval_cmd(reference_run.out, out), cwd=tmp_path, trace=trace)
    assert final.wait() == 0, final.stderr
    report = check_eval_trace(read_trace(trace), EVAL_BATCHES, EVAL_LABELS)
    assert report.processes == len(EVAL_KILL_MODES) + 1
    assert report.batches_redone <= len(EVAL_KILL_MODES)  # at most the batch in progress, once per kill
    assert not list(out.glob(".*.tmp")), "the resumed evaluation should remove the temporary files of killed writes"
    assert_same_eval(out, reference_eval)
    print(f"\neval kills: {kills}\nredo: {report}")
