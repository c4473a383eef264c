"""Shared fixtures of the fault-injection suite (helpers live in ``faultkit.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import EPOCHS, EVAL_BATCHES, EVAL_LABELS, N_BATCHES, Segment, eval_cmd, read_trace, rfbench, train_cmd


@dataclass
class ReferenceRun:
    """An uninterrupted traced ``rfbench train`` of the tiny budget."""

    out: Path
    trace: Segment

    @property
    def batches(self) -> list[tuple[int, str]]:
        return self.trace.batches


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> ReferenceRun:
    """The run every killed, interrupted or disk-full run must reproduce bit for bit."""
    work = tmp_path_factory.mktemp("reference")
    trace = work / "trace.txt"
    proc = rfbench(train_cmd(work / "run"), cwd=work, trace=trace)
    assert proc.returncode == 0, proc.stderr
    (seg,) = read_trace(trace)
    assert seg.start == (0, 0) and len(seg.batches) == EPOCHS * N_BATCHES and seg.vals == list(range(1, EPOCHS + 1))
    assert len({h for _, h in seg.batches}) == len(seg.batches), "batch hashes must identify batches"
    return ReferenceRun(work / "run", seg)


@pytest.fixture(scope="session")
def reference_eval(tmp_path_factory, reference_run) -> Path:
    """An uninterrupted traced ``rfbench eval`` of the reference run; returns its output directory."""
    work = tmp_path_factory.mktemp("reference-eval")
    trace = work / "trace.txt"
    proc = rfbench(eval_cmd(reference_run.out, work / "eval"), cwd=work, trace=trace)
    assert proc.returncode == 0, proc.stderr
    (seg,) = read_trace(trace)
    assert seg.eval_start == frozenset() and len(seg.eval_saved) == EVAL_BATCHES
    assert seg.eval_attacks == [(lab, b) for b in range(EVAL_BATCHES) for lab in EVAL_LABELS]
    return work / "eval"
