"""Helpers of the fault-injection suite: real ``rfbench`` subprocesses, their traces, run comparisons.

Every fault test drives the real command line (``python -m rfbench``)
in a subprocess, on the tiny Fashion-MNIST budget below, and with the
instrumentation of ``hook/sitecustomize.py`` switched on by
``RFBENCH_FAULT_TRACE``.  The trace lists what each process actually did
(batches trained, validations, checkpoint writes), which lets a test prove
that a resumed run redid nothing that had been saved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rfbench.core.io import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
HOOK_DIR = Path(__file__).resolve().parent / "hook"

# ~300 training images (320 = 32 per class), 2 attack steps, 10 validation images per class
EPOCHS, BATCH, N_TRAIN, CHECKPOINT_EVERY = 3, 32, 320, 3
N_BATCHES = N_TRAIN // BATCH  # per epoch
TRAIN_ARGS = [
    "train", "--dataset", "fashion-mnist", "--model", "smallcnn", "--max-train-samples", str(N_TRAIN),
    "--val-per-class", "10", "--steps", "2", "--val-steps", "2", "--batch-size", str(BATCH), "--optimizer", "adam",
    "--lr", "1e-3", "--weight-decay", "0", "--device", "cpu", "--seed", "3", "--epochs", str(EPOCHS),
    "--checkpoint-every", str(CHECKPOINT_EVERY), "--quiet",
]
TRAIN_OVERRIDES = ["model_kwargs.width=0.25"]  # key=value overrides go last on the command line
# fields that legitimately differ between two runs of the same config
TIMING_KEYS = {"seconds", "wall_seconds_this_session", "train_seconds_total", "host"}


# the evaluation of a run: 100 test images in 10 batches, three attacks (two with random starts)
EVAL_BATCHES = 10
EVAL_ATTACKS = ["fgsm", "pgd:steps=5", "cw:steps=5"]
EVAL_LABELS = ["fgsm", "pgd-5", "cw-5"]


def eval_cmd(run: Path, out: Path, *extra: str) -> list[str]:
    """``rfbench eval`` of a run's last checkpoint on the tiny budget into ``out``."""
    attacks = [a for spec in EVAL_ATTACKS for a in ("--attack", spec)]
    return ["eval", "--run", str(run), "--which", "last", "--n-per-class", "10", "--batch-size", "10", *attacks,
            "--seed", "1", "--device", "cpu", "--quiet", "--out", str(out), *extra]


def train_cmd(out: Path, *extra: str) -> list[str]:
    """``rfbench train`` on the tiny budget into ``out`` (extra flags before the overrides)."""
    return [*TRAIN_ARGS, "--out", str(out), *extra, *TRAIN_OVERRIDES]


def env(trace: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a subprocess: the repository and the hook importable, one thread, optional trace."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("RFBENCH_FAULT_")}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(HOOK_DIR), os.environ.get("PYTHONPATH", "")) if p)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    if trace is not None:
        e["RFBENCH_FAULT_TRACE"] = str(trace)
    e.update(extra)
    return e


@dataclass
class Proc:
    """A running ``rfbench`` subprocess with its stderr in a file."""

    popen: subprocess.Popen
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float = 300) -> int:
        return self.popen.wait(timeout)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def start(args: list[str], cwd: Path, trace: Path | None = None, **extra_env: str) -> Proc:
    """Start ``python -m rfbench ARGS`` in ``cwd`` (its own session, so signals reach only it)."""
    cwd.mkdir(parents=True, exist_ok=True)
    n = len(list(cwd.glob("stderr-*.txt")))
    err = cwd / f"stderr-{n}.txt"
    with open(cwd / f"stdout-{n}.txt", "wb") as out, open(err, "wb") as fh:
        popen = subprocess.Popen([sys.executable, "-m", "rfbench.benchmark.cli", *args], cwd=cwd, stdout=out, stderr=fh,
                                 env=env(trace, **extra_env), start_new_session=True)
    return Proc(popen, err)


def rfbench(args: list[str], cwd: Path, trace: Path | None = None, timeout: float = 300,
            **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``python -m rfbench ARGS`` to completion; returns code, stdout and stderr."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "rfbench.benchmark.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env(trace, **extra_env), timeout=timeout)


def wait_until(cond: Callable[[], bool], proc: Proc, timeout: float = 240, poll: float = 0.005) -> bool:
    """Poll ``cond`` until it holds (True) or the process exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.popen.poll() is not None:
            return cond()
        time.sleep(poll)
    raise TimeoutError("the subprocess made no progress in time")


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr ends with exactly one ``rfbench: error: ...`` line containing ``fragments``, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [l for l in stderr.splitlines() if l.startswith("rfbench: error:")]
    assert len(lines) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == lines[0], stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


# -- traces --------------------------------------------------------------------------
State = tuple  # (G, P): G batches trained; P=1 when inside an epoch (the epoch-G/N validation not yet done)


@dataclass
class Segment:
    """What one process did, in order (see hook/sitecustomize.py for the events)."""

    pid: int
    start: State | None = None
    batches: list[tuple[int, str]] = field(default_factory=list)  # (epoch, hash of the batch's sample positions)
    validating: list[int] = field(default_factory=list)
    vals: list[int] = field(default_factory=list)
    saving: list[State] = field(default_factory=list)
    saved: list[State] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)  # files caught in the middle of a write
    eval_start: frozenset[int] | None = None  # batches already in the flag file when the evaluation started
    eval_attacks: list[tuple[str, int]] = field(default_factory=list)  # (attack label, batch)
    eval_saving: list[frozenset[int]] = field(default_factory=list)
    eval_saved: list[frozenset[int]] = field(default_factory=list)


def segment_of(path: Path, pid: int) -> Segment:
    """The trace of process ``pid`` so far (empty if it has not reached the trainer yet)."""
    return next((s for s in read_trace(path) if s.pid == pid), Segment(pid))


def read_trace(path: Path) -> list[Segment]:
    """The trace file as one :class:`Segment` per process, in the order the processes ran."""
    segments: dict[int, Segment] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        pid, event, *rest = line.split()
        seg = segments.setdefault(int(pid), Segment(int(pid)))
        if event == "start":
            seg.start = (int(rest[0]), int(rest[1]))
        elif event == "batch":
            seg.batches.append((int(rest[0]), rest[1]))
        elif event == "validating":
            seg.validating.append(int(rest[0]))
        elif event == "val":
            seg.vals.append(int(rest[0]))
        elif event in ("saving", "saved"):
            getattr(seg, event).append((int(rest[0]), int(rest[1])))
        elif event == "half-written":
            seg.half_written.append(rest[0])
        elif event == "eval-start":
            seg.eval_start = _batch_set(rest[0])
        elif event == "eval-attack":
            seg.eval_attacks.append((rest[0], int(rest[1])))
        elif event in ("eval-saving", "eval-saved"):
            getattr(seg, event.replace("-", "_")).append(_batch_set(rest[0]))
    return list(segments.values())


def _batch_set(text: str) -> frozenset[int]:
    return frozenset() if text == "-" else frozenset(int(b) for b in text.split(","))


def validated_at(state: State) -> set[int]:
    """Epochs (1-based) whose validation a saved state already contains."""
    g, inside = state
    return {e for e in range(1, g // N_BATCHES + 1) if e * N_BATCHES < g or not inside}


def resume_points(start, saved: list, saving: list):
    """Where a process killed after ``saved`` (and while writing ``saving``) may be resumed from.

    The newest durable save (or its own start if it saved nothing), and the saves it
    had begun but not confirmed: a kill after the rename makes those durable too.
    """
    durable = saved[-1] if saved else start
    return durable, [s for s in saving if s not in saved]


@dataclass
class RedoReport:
    """How much work the resumed processes repeated."""

    processes: int
    batches_trained: int
    batches_redone: int
    validations_redone: int


def check_training_trace(segments: list[Segment], reference: list[tuple[int, str]]) -> RedoReport:
    """Assert that a sequence of killed/resumed processes did exactly the reference run's work.

    * each process resumed from the newest durable save of the one before, or from the
      save it was killed in the middle of if the rename had already happened: nothing
      saved is lost;
    * each process trained exactly the reference's batches that follow its resume point,
      in order (same epochs, same samples): the data order survives the resume;
    * no batch or validation contained in the state a process resumed from is done again,
      and the batches repeated after a kill are at most those since the last save;
    * together the processes trained every reference batch.
    """
    segs = [s for s in segments if s.start is not None]
    assert segs and segs[0].start == (0, 0), "the first process must start from scratch"
    trained = [0] * len(reference)
    for k, seg in enumerate(segs):
        g0 = seg.start[0]
        if k:
            prev = segs[k - 1]
            durable, in_flight = resume_points(prev.start, prev.saved, prev.saving)
            assert seg.start == durable or seg.start in in_flight, (
                f"process {k} resumed at {seg.start}, but the newest durable save was {durable} "
                f"(in flight: {in_flight})")
            lost = prev.start[0] + len(prev.batches) - g0
            assert 0 <= lost <= CHECKPOINT_EVERY, f"process {k - 1} lost {lost} trained batches"
        got = seg.batches
        assert got == reference[g0: g0 + len(got)], (
            f"process {k} (resumed after {g0} batches) trained other batches than the reference")
        for g in range(g0, g0 + len(got)):
            trained[g] += 1
        redo = set(seg.vals) & validated_at(seg.start)
        assert not redo, f"process {k} validated epochs {sorted(redo)} again although their end state was saved"
    assert all(n >= 1 for n in trained), "some reference batches were never trained"
    n_vals = sum(len(s.vals) for s in segs)
    return RedoReport(len(segs), sum(trained), sum(trained) - len(reference), n_vals - EPOCHS)


@dataclass
class EvalRedoReport:
    """How much evaluation work the resumed processes repeated."""

    processes: int
    batches_evaluated: int
    batches_redone: int


def check_eval_trace(segments: list[Segment], n_batches: int, labels: list[str]) -> EvalRedoReport:
    """Assert that killed/resumed evaluations did every batch, and never one already in the flag file.

    * each process started from the newest durable flag file of the one before (or the
      one being written when it was killed, if the rename had happened);
    * no process attacked a batch that its starting flag file already held;
    * a killed process lost at most the one batch it was working on;
    * each saved flag file adds exactly the batch just finished.
    """
    segs = [s for s in segments if s.eval_start is not None]
    assert segs and segs[0].eval_start == frozenset(), "the first evaluation must start from scratch"
    evaluated = [0] * n_batches
    for k, seg in enumerate(segs):
        if k:
            prev = segs[k - 1]
            durable, in_flight = resume_points(prev.eval_start, prev.eval_saved, prev.eval_saving)
            assert seg.eval_start == durable or seg.eval_start in in_flight, (
                f"evaluation {k} resumed with batches {sorted(seg.eval_start)}, but the newest durable flag file "
                f"held {sorted(durable)}")
            begun = {b for _, b in prev.eval_attacks}
            lost = begun - seg.eval_start
            assert len(lost) <= 1, f"evaluation {k - 1} lost {len(lost)} batches: {sorted(lost)}"
        batches = {b for _, b in seg.eval_attacks}
        again = batches & seg.eval_start
        assert not again, f"evaluation {k} attacked batches {sorted(again)} that its flag file already held"
        before = seg.eval_start
        for saved in seg.eval_saved:
            assert before < saved and len(saved - before) == 1, "each flag-file write adds exactly one batch"
            before = saved
        for b in batches:
            runs = [lab for lab, bb in seg.eval_attacks if bb == b]
            assert runs == labels[: len(runs)], f"evaluation {k} ran {runs} on batch {b}, expected {labels} in order"
            evaluated[b] += 1
    assert segs[-1].eval_saved and segs[-1].eval_saved[-1] == frozenset(range(n_batches)), "unfinished evaluation"
    assert all(n >= 1 for n in evaluated)
    return EvalRedoReport(len(segs), sum(evaluated), sum(evaluated) - n_batches)


# -- comparing runs --------------------------------------------------------------------
def strip_timing(obj):
    """``obj`` without wall-clock fields (recursively), which differ between any two runs."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def _assert_tensors_equal(a, b, where: str) -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys differ"
        for k in a:
            _assert_tensors_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(got: Path, want: Path) -> None:
    """Two run directories hold bit-identical training results (weights, optimiser, best, history, logs)."""
    a, b = load_checkpoint(got / "checkpoint-last.pt"), load_checkpoint(want / "checkpoint-last.pt")
    assert a["epoch"] == b["epoch"] and a["partial"] is None and b["partial"] is None
    for key in ("model", "optimizer", "defense_state", "extra_models", "perm_gen", "aug_gen", "attack_gen"):
        _assert_tensors_equal(a[key], b[key], f"checkpoint-last.{key}")
    assert strip_timing(a["history"]) == strip_timing(b["history"])
    assert a["best_score"] == b["best_score"]
    best_a, best_b = load_checkpoint(got / "checkpoint-best.pt"), load_checkpoint(want / "checkpoint-best.pt")
    assert best_a["epoch"] == best_b["epoch"]
    _assert_tensors_equal(best_a["model"], best_b["model"], "checkpoint-best.model")
    logs = [[strip_timing(json.loads(l)) for l in (d / "log.jsonl").read_text().splitlines()] for d in (got, want)]
    assert logs[0] == logs[1] and len(logs[0]) == EPOCHS
    summaries = [strip_timing(json.loads((d / "summary.json").read_text())) for d in (got, want)]
    assert summaries[0] == summaries[1]


def assert_same_eval(got: Path, want: Path) -> None:
    """Two evaluation directories hold the same result (all but provenance) and the same per-sample flags."""
    import numpy as np

    a, b = (json.loads((d / "result.json").read_text()) for d in (got, want))
    assert set(a) == set(b)
    for key in a:
        if key != "provenance":
            assert a[key] == b[key], f"result.json differs in {key!r}"
    assert (got / "per_class.csv").read_bytes() == (want / "per_class.csv").read_bytes()
    with np.load(got / "flags.npz") as fa, np.load(want / "flags.npz") as fb:
        assert set(fa.files) == set(fb.files)
        for k in fa.files:
            if k == "meta":
                ma, mb = (json.loads(str(f["meta"])) for f in (fa, fb))
                ma.pop("elapsed_s"), mb.pop("elapsed_s")
                assert ma == mb
            else:
                assert np.array_equal(fa[k], fb[k], equal_nan=fa[k].dtype.kind == "f"), f"flags.npz differs in {k!r}"


#: a process that holds ``exclusive_dir(argv[1])`` until killed, and says so on stdout
HOLD = ("import sys, time\n"
        "from rfbench.core.io.lock import exclusive_dir\n"
        "with exclusive_dir(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n")
#: the smallest `rfbench train` call (the lock tests only need it to reach its output directory)
TRAIN_SMALL = ["train", "--dataset", "fashion-mnist", "--max-train-samples", "64", "--epochs", "1", "--device", "cpu",
               "--quiet"]


def hold_lock(path: Path, name: str) -> subprocess.Popen:
    """Start a process (``name`` in its command line) holding the lock of directory ``path``; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), name], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc
