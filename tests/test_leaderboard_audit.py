"""``rfbench leaderboard audit`` (re-execution of a sampled evaluation) and the atomic ``submit`` of entry + flags.

Two real tiny runs of the fashion-mnist-linf track (PGD-AT, seeds 0 and 1) are made once per module.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_runs import write_tiny_track

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.eval.metrics import summarize
from rfbench.benchmark.leaderboard import check_entry_file, load_track
from rfbench.benchmark.leaderboard import submit as submit_mod
from rfbench.benchmark.leaderboard.audit import audit_entry, passing_record, sample_batches, write_record
from rfbench.benchmark.leaderboard.board import collect
from rfbench.benchmark.leaderboard.submit import submit
from rfbench.benchmark.runner import execute_run, load_run_config, resolve_run
from rfbench.core.errors import RfbenchError
from rfbench.core.perclass import per_class_accuracy

TRACK_ID = "fashion-mnist-linf"
CODE = "https://example.org/pgd-at.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    track_path = write_tiny_track(base / "template")
    out = {}
    for seed in (0, 1):
        run = resolve_run(load_run_config(track_path), defense="pgd-at", seed=seed, out=base / f"pgd-at-s{seed}",
                          quiet=True)
        out[seed] = execute_run(run, quiet=True)
    return out


@pytest.fixture
def repo(tmp_path):
    write_tiny_track(tmp_path)
    return tmp_path


def _track(repo: Path):
    return load_track(repo / "leaderboards" / TRACK_ID / "track.yaml")


def _ckpt(run_dir: Path) -> Path:
    return run_dir / "train" / "checkpoint-best.pt"


def _set_vectors(data: dict, flags: SampleFlags) -> None:
    ev = data["evaluations"]["best"]
    ok = {"clean": flags.clean_correct, **{a: flags.robust(a) for a in ev["attacks"]},
          "worst_case": flags.worst_case(ev["worst_case_over"])}
    for name, v in ok.items():
        vec = per_class_accuracy(v, flags.y, 10)
        ev["per_class"][name] = vec.tolist()
        ev["summary"][name] = summarize(vec)


def test_the_sample_is_whole_batches_holding_at_least_100_images_or_5_percent():
    assert sample_batches(50, 100, 0) == [0]
    b = sample_batches(5000, 500, 7)
    assert len(b) == 1 and sample_batches(5000, 500, 7) == b  # 500 >= max(100, 250); replayable from its seed
    b = sample_batches(5000, 64, 3)
    assert len(b) == 4 and len(set(b)) == 4  # 4 x 64 = 256 >= 250
    assert {tuple(sample_batches(5000, 500, s)) for s in range(20)} != {(0,)}  # the seed moves the sample
    assert len(sample_batches(5000, 500, 0, fraction=0.5)) == 5
    with pytest.raises(RfbenchError, match="--fraction"):
        sample_batches(5000, 500, 0, fraction=0.01)


def test_an_honest_entry_passes_and_its_record_marks_it_audited(runs, repo, capsys):
    path = submit(runs[0], _track(repo), repo, code=CODE)
    entry = json.loads(path.read_text())
    assert entry["evaluations"]["best"]["checkpoint_sha256"] == submit_mod.file_sha256(_ckpt(runs[0]))
    report = audit_entry(path, _ckpt(runs[0]), repo, seed=0)
    assert report.passed and report.images == 50 and report.total == 50 and not report.overclaimed
    assert main(["leaderboard", "audit", str(path), "--checkpoint", str(_ckpt(runs[0])), "--root", str(repo),
                 "--record"]) == 0
    assert "audit PASS" in capsys.readouterr().out
    track = _track(repo)
    assert passing_record(check_entry_file(path, repo), track, repo) is not None
    assert "pgd-at-s0" in collect(track, repo).audited
    assert main(["leaderboard", "build", "--root", str(repo)]) == 0
    page = (repo / "leaderboards" / TRACK_ID / "README.md").read_text()
    assert "Audited" in page and "- `pgd-at-s0`: audited " in page


def test_another_checkpoint_is_refused(runs, repo, capsys):
    path = submit(runs[0], _track(repo), repo, code=CODE)
    with pytest.raises(RfbenchError, match="refusing to audit it against another file"):
        audit_entry(path, _ckpt(runs[1]), repo, seed=0)
    assert main(["leaderboard", "audit", str(path), "--checkpoint", str(_ckpt(runs[1])), "--root", str(repo)]) == 2


def test_flags_claiming_robustness_the_model_lacks_fail_the_audit(runs, repo, capsys):
    """Images the attacks broke are written as robust and the vectors recomputed: check passes, the audit fails."""
    path = submit(runs[0], _track(repo), repo, code=CODE)
    data = json.loads(path.read_text())
    flags_path = repo / data["evaluations"]["best"]["flags_file"]
    flags = SampleFlags.load(flags_path)
    broken = np.flatnonzero(~flags.worst_case(flags.labels))[:3]
    assert broken.size == 3
    for r in broken:
        flags.clean_pred[r] = flags.y[r]
        flags.adv_pred[r] = flags.y[r]
        flags.ran[r] = True
    flags_path.unlink()
    flags.save(flags_path)
    _set_vectors(data, flags)
    path.write_text(json.dumps(data))
    check_entry_file(path, repo)  # the numbers follow from the (doctored) flags
    report = audit_entry(path, _ckpt(runs[0]), repo, seed=0)
    assert not report.passed and set(report.overclaimed) == {int(flags.index[r]) for r in broken}
    assert main(["leaderboard", "audit", str(path), "--checkpoint", str(_ckpt(runs[0])), "--root", str(repo),
                 "--record"]) == 1
    assert "audit FAIL" in capsys.readouterr().out
    assert passing_record(check_entry_file(path, repo), _track(repo), repo) is None


def test_flags_of_another_model_are_refused(runs, repo):
    """The seed-1 run's flags under the seed-0 checkpoint's sha256: the harness sees another model."""
    path = submit(runs[0], _track(repo), repo, code=CODE)
    data = json.loads(path.read_text())
    other = submit(runs[1], _track(repo), repo, code=CODE)
    data["evaluations"]["best"] = {**json.loads(other.read_text())["evaluations"]["best"],
                                   "checkpoint_sha256": data["evaluations"]["best"]["checkpoint_sha256"]}
    path.write_text(json.dumps(data))
    with pytest.raises(RfbenchError, match="not produced by this checkpoint"):
        audit_entry(path, _ckpt(runs[0]), repo, seed=0)


def test_a_track_requiring_an_audit_ranks_only_audited_entries(runs, repo):
    track_file = repo / "leaderboards" / TRACK_ID / "track.yaml"
    data = yaml.safe_load(track_file.read_text())
    data["track"]["require_audit"] = True
    track_file.write_text(yaml.safe_dump(data, sort_keys=False))
    path = submit(runs[0], _track(repo), repo, code=CODE)
    board = collect(_track(repo), repo)
    assert board.entries == [] and "pgd-at-s0" in board.held
    write_record(audit_entry(path, _ckpt(runs[0]), repo, seed=1), _track(repo))
    board = collect(_track(repo), repo)
    assert [e.id for e in board.entries] == ["pgd-at-s0"] and not board.held
    data = json.loads(path.read_text())  # the record names the checkpoint and flags it audited: change one, it lapses
    data["evaluations"]["best"]["checkpoint_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    assert "pgd-at-s0" in collect(_track(repo), repo).held


# -- submit replaces entry and flags as a pair -------------------------------------------------------------------
class Killed(BaseException):
    """A kill -9 at this point: nothing after it runs."""


def _pair(repo: Path) -> tuple[dict, list[bytes]]:
    path = repo / "leaderboards" / TRACK_ID / "pgd-at-s0.json"
    entry = check_entry_file(path, repo)  # the pair on disk is a valid entry with its own flags
    data = json.loads(path.read_text())
    return data, [(repo / ev.flags_file).read_bytes() for ev in entry.evaluations.values()]


@pytest.mark.parametrize("fault", ["kill", "disk-full"])
def test_submit_force_interrupted_anywhere_leaves_the_old_or_the_new_pair(runs, tmp_path, monkeypatch, fault):
    ref = tmp_path / "reference"
    write_tiny_track(ref)
    submit(runs[1], _track(ref), ref, code=CODE, entry_id="pgd-at-s0")
    new = _pair(ref)
    steps = 0
    while True:
        repo = tmp_path / f"try{steps}"
        write_tiny_track(repo)
        submit(runs[0], _track(repo), repo, code=CODE)
        old = _pair(repo)
        count = {"n": 0}

        def maybe_fail(real):
            def wrapped(*args, **kwargs):
                count["n"] += 1
                if count["n"] == steps + 1:
                    if fault == "kill":
                        raise Killed()
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(*args, **kwargs)
            return wrapped

        with monkeypatch.context() as m:
            m.setattr(submit_mod, "atomic_write_bytes", maybe_fail(submit_mod.atomic_write_bytes))
            m.setattr(submit_mod, "atomic_write_json", maybe_fail(submit_mod.atomic_write_json))
            m.setattr(Path, "unlink", maybe_fail(Path.unlink))
            try:
                submit(runs[1], _track(repo), repo, code=CODE, force=True, entry_id="pgd-at-s0")
                finished = True
            except (Killed, OSError):
                finished = False
        now = _pair(repo)
        assert now == old or now == new, f"after {steps} steps: a mixed pair"
        if finished:
            assert now == new
            break
        steps += 1
    assert steps >= 3  # two flag files and the entry were each interrupted
    flags_dir = repo / "leaderboards" / TRACK_ID / "flags"
    assert sorted(p.name for p in flags_dir.iterdir()) == sorted(
        Path(ev["flags_file"]).name for ev in new[0]["evaluations"].values())  # the old pair's flags are gone


def test_without_git_the_ledger_submit_keeps_says_who_was_first(runs, repo, capsys):
    """b-s0 then a-s0, the same run: a-s0 (the smaller id, the earlier `submitted`) is still the copy."""
    submit(runs[0], _track(repo), repo, code=CODE, entry_id="b-s0")
    a = submit(runs[0], _track(repo), repo, code=CODE, entry_id="a-s0", allow_identical=True)
    data = json.loads(a.read_text())
    data["submitted"] = "2000-01-01"
    a.write_text(json.dumps(data))
    ledger = repo / "leaderboards" / TRACK_ID / "ledger.jsonl"
    assert [json.loads(line)["id"] for line in ledger.read_text().splitlines()] == ["b-s0", "a-s0"]
    ranking = collect(_track(repo), repo).ranking
    assert ranking is not None and ranking.row("a-s0").identical_to == "b-s0"
    submit(runs[0], _track(repo), repo, code=CODE, entry_id="b-s0", force=True, allow_identical=True)  # same file: no line
    assert len(ledger.read_text().splitlines()) == 2
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join([lines[1].replace('"seq": 1', '"seq": 0'), lines[0]]) + "\n")  # reordered
    ranking = collect(_track(repo), repo).ranking
    assert ranking is not None and ranking.row("b-s0").identical_to == "a-s0"  # no order: the smaller id
    assert main(["leaderboard", "check", "--root", str(repo)]) == 0
    assert "ledger.jsonl line 1 does not continue the chain" in capsys.readouterr().out
