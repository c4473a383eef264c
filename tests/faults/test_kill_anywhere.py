"""Seeded kill-anywhere stress test: ``SIGKILL`` at random moments of six commands, rerun, compare.

Each command (``train``, ``eval``, ``run``, ``sweep``, ``leaderboard submit``,
``leaderboard build``) is first run once uninterrupted on a tiny budget, and
its wall time ``T`` measured.  Then the same command is started again in a
fresh copy of its inputs and killed (``SIGKILL`` to its whole process group)
after a delay drawn from a seeded RNG in ``[0, T]``, so the kills land in
every phase: interpreter start-up and imports, data loading, training,
checkpoint writes, attacks, flag-file writes, page rendering.  The killed
command is rerun (the same command line, which resumes) and may be killed
again; after the last kill it runs to completion and every output file is
compared with the uninterrupted run, bit for bit:

* checkpoints (``*.pt``): every tensor of every state dict, and all other values;
* ``flags.npz``: every array, and the ``meta`` record minus ``elapsed_s``;
* JSON files (``result.json``, ``summary.json``, ``log.jsonl`` lines, entries,
  ``stages.json``, ``sweep.json``): equal after removing :data:`EXCLUDED`;
* everything else (``per_class.csv/.md``, ``report.md``, ``config.yaml``,
  ``README.md`` pages, HTML pages, PNG plots): byte-identical.

After each kill the lock files (``.OUT.rfbench.lock``, see
``rfbench/core/io/lock.py``) must be free at once: a kill never blocks the rerun.

``--kill-count N`` (or ``RFBENCH_KILL_COUNT``) sets the number of kills,
shared round-robin over the commands in the order of :data:`COMMANDS`; the
default 3 kills ``run``, ``submit`` and ``build`` once each.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from faultkit import TIMING_KEYS, _assert_tensors_equal, env, eval_cmd, train_cmd

from rfbench.core.io import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_runs import write_tiny_track  # noqa: E402

KILL_SEED = 1717
COMMANDS = ("run", "submit", "build", "train", "eval", "sweep")
TRACK = "leaderboards/fashion-mnist-linf/track.yaml"
# fields that legitimately differ between an uninterrupted run and a killed-and-resumed one: wall-clock
# durations (TIMING_KEYS, cost.train_seconds/eval_seconds, flags meta elapsed_s), the moments a stage or run
# finished (finished_at), and provenance (git state, package versions, the command line and its time)
EXCLUDED = frozenset(TIMING_KEYS | {"train_seconds", "eval_seconds", "finished_at", "elapsed_s", "provenance"})


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in EXCLUDED}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _outputs(root: Path) -> list[Path]:
    """Every regular file under ``root``, relative, except lock files (which hold the writer's pid)."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".rfbench.lock"))


def assert_same_tree(got: Path, want: Path) -> None:
    """``got`` holds exactly the files of ``want``, each equal as the module docstring says."""
    files = _outputs(want)
    assert _outputs(got) == files, f"{got}: other files than the uninterrupted run"
    for rel in files:
        a, b = got / rel, want / rel
        if rel.suffix == ".pt":
            _assert_tensors_equal(_strip(load_checkpoint(a)), _strip(load_checkpoint(b)), str(rel))
        elif rel.suffix == ".npz":
            with np.load(a) as fa, np.load(b) as fb:
                assert set(fa.files) == set(fb.files), rel
                for k in fa.files:
                    if k == "meta":
                        assert _strip(json.loads(str(fa[k]))) == _strip(json.loads(str(fb[k]))), rel
                    else:
                        assert np.array_equal(fa[k], fb[k], equal_nan=fa[k].dtype.kind == "f"), f"{rel}: {k}"
        elif rel.suffix == ".json":
            assert _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text())), rel
        elif rel.suffix == ".jsonl":
            lines = [[_strip(json.loads(l)) for l in p.read_text().splitlines()] for p in (a, b)]
            assert lines[0] == lines[1], rel
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel} differs"


# -- the commands --------------------------------------------------------------------
def _grid(work: Path) -> None:
    (work / "grid.yaml").write_text(yaml.safe_dump({"base": TRACK, "defenses": ["pgd-at"], "seeds": [0, 1],
                                                    "out": "sweep"}))


def _command(name: str, work: Path, refs: dict[str, Path]) -> tuple[list[str], list[str]]:
    """Prepare ``work`` for command ``name``; returns its arguments and the outputs to compare (relative)."""
    work.mkdir(parents=True)
    if name == "train":
        return train_cmd(work / "run"), ["run"]
    if name == "eval":
        return eval_cmd(refs["train"] / "run", work / "eval"), ["eval"]
    write_tiny_track(work)
    if name == "run":
        return ["run", TRACK, "--defense", "pgd-at", "--out", "runs/pgd-at-s0", "--quiet"], ["runs"]
    if name == "sweep":
        _grid(work)
        return ["sweep", "grid.yaml", "--quiet"], ["sweep"]
    if name == "submit":
        shutil.copytree(refs["run"] / "runs", work / "runs")
        return ["leaderboard", "submit", "runs/pgd-at-s0", "--track", "fashion-mnist-linf", "--id", "pgd-at-s0",
                "--code", "https://example.org/pgd_at.py", "--name", "PGD-AT", "--force", "--root", "."], \
            ["leaderboards"]
    if name == "build":
        shutil.rmtree(work)
        shutil.copytree(refs["submit"], work)
        return ["leaderboard", "build", "--html", "site", "--root", "."], ["leaderboards", "site"]
    raise KeyError(name)


NEEDS = {"train": (), "eval": ("train",), "run": (), "sweep": (), "submit": ("run",), "build": ("run", "submit")}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rfbench.benchmark.cli", *args], cwd=cwd, env=env(),
                            stdout=subprocess.DEVNULL, stderr=open(cwd.parent / f"{cwd.name}.stderr", "ab"),
                            start_new_session=True)


def _assert_locks_free(work: Path) -> None:
    for lock in work.rglob("*.rfbench.lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the killed holder still had it
        finally:
            os.close(fd)


def kill_counts(total: int) -> dict[str, int]:
    return {name: len(range(i, total, len(COMMANDS))) for i, name in enumerate(COMMANDS)}


def run_kill_anywhere(tmp: Path, total: int, seed: int = KILL_SEED) -> dict[str, list]:
    """Kill ``total`` times across :data:`COMMANDS`; returns per command the kills' delays (seconds) and fractions."""
    rng = random.Random(seed)
    counts = kill_counts(total)
    wanted = {n for n, k in counts.items() if k} | {d for n, k in counts.items() if k for d in NEEDS[n]}
    wanted |= {d for n in list(wanted) for d in NEEDS[n]}
    refs, duration, log, early = {}, {}, {}, {}
    work = tmp / "work"  # every run happens at the same path, so absolute paths in outputs agree
    for name in ("train", "eval", "run", "submit", "build", "sweep"):  # dependencies first
        if name not in wanted:
            continue
        args, outs = _command(name, work, refs)
        t0 = time.monotonic()
        proc = _start(args, work)
        assert proc.wait(600) == 0, (work.parent / "work.stderr").read_text()
        duration[name] = time.monotonic() - t0
        refs[name] = tmp / f"ref-{name}"
        work.rename(refs[name])
        kills = log[name] = []
        while len(kills) < counts[name]:
            args, outs = _command(name, work, refs)
            while len(kills) < counts[name]:
                frac = rng.random()
                proc = _start(args, work)
                try:
                    rc = proc.wait(frac * duration[name])
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait(60)
                    if rc == -signal.SIGKILL:
                        kills.append(round(frac, 3))
                        _assert_locks_free(work)
                        continue
                    # it exited on its own in the instant before the kill: as if it had finished first
                assert rc == 0, (work.parent / "work.stderr").read_text()
                early[name] = early.get(name, 0) + 1
                break  # finished before the kill: compare, then start a fresh copy for the remaining kills
            else:
                proc = _start(args, work)
                assert proc.wait(600) == 0, (work.parent / "work.stderr").read_text()
            assert not [p for p in work.rglob(".*.tmp")], "the rerun left temporary files of killed writes"
            for out in outs:
                assert_same_tree(work / out, refs[name] / out)
            shutil.rmtree(work)
        log[name] = {"kills": len(kills), "T_s": round(duration[name], 1), "at_fraction_of_T": kills,
                     "finished_before_the_kill": early.get(name, 0)}
    return log


def _total(config) -> int:
    return int(config.getoption("--kill-count") or os.environ.get("RFBENCH_KILL_COUNT") or 3)


def test_kill_anywhere_resumes_to_the_uninterrupted_result(tmp_path, request):
    total = _total(request.config)
    log = run_kill_anywhere(tmp_path, total)
    assert sum(v["kills"] for v in log.values()) == total
    print(f"\nkill-anywhere ({total} kills, seed {KILL_SEED}): {json.dumps(log)}")


def test_kill_counts_are_shared_round_robin():
    assert kill_counts(3) == {"run": 1, "submit": 1, "build": 1, "train": 0, "eval": 0, "sweep": 0}
    assert kill_counts(20) == {"run": 4, "submit": 4, "build": 3, "train": 3, "eval": 3, "sweep": 3}


def test_the_comparison_sees_a_one_bit_change(tmp_path):
    """``assert_same_tree`` is not vacuous: one changed weight bit, flag or page byte is a failure."""
    import torch

    from rfbench.core.io import save_checkpoint

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        save_checkpoint(d / "c.pt", {"model": {"w": torch.ones(3)}, "history": [{"seconds": float(ord(d.name))}]})
        np.savez(d / "flags.npz", done=np.ones(4, bool))
        (d / "page.md").write_text("| a |\n")
        (d / "result.json").write_text(json.dumps({"acc": 0.5, "provenance": {"finished_at": d.name}}))
    assert_same_tree(a, b)  # excluded fields differ only
    w = torch.ones(3)
    w.view(torch.int32)[1] ^= 1
    save_checkpoint(b / "c.pt", {"model": {"w": w}, "history": [{"seconds": 1.0}]})
    with pytest.raises(AssertionError):
        assert_same_tree(a, b)
