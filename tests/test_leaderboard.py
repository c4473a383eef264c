"""Leaderboard tracks, entries, check, submit and build.

One real (tiny) run of the fashion-mnist-linf track is submitted once per
module; every rejection test corrupts a copy of that valid entry in one way
and asserts the specific message `check` gives.
"""

from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
from archived_board import restore_v1
from tiny_runs import REPO, write_tiny_track

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval.harness import EvalConfig
from rfbench.benchmark.eval.metrics import summarize
from rfbench.benchmark.leaderboard import EntryError, check_entry, check_entry_file, find_track, load_track
from rfbench.benchmark.leaderboard.build import build
from rfbench.benchmark.leaderboard.schema import list_tracks
from rfbench.benchmark.leaderboard.submit import defense_code_path, submit
from rfbench.benchmark.runner import execute_run, load_run_config, resolve_run
from rfbench.core.config import from_dict
from rfbench.core.errors import RfbenchError

TRACK_ID = "fashion-mnist-linf"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A repository root with the tiny track and one submitted entry (from a real run)."""
    root = tmp_path_factory.mktemp("repo")
    track_path = write_tiny_track(root)
    run = resolve_run(load_run_config(track_path), defense="pgd-at", out=root / "runs" / "pgd-at-s0", quiet=True)
    run_dir = execute_run(run, quiet=True)
    track = load_track(track_path)
    entry_path = submit(run_dir, track, root, code="https://example.org/pgd-at.py", name="PGD-AT")
    return {"root": root, "track": track, "run_dir": run_dir, "entry_path": entry_path,
            "entry": json.loads(entry_path.read_text())}


def _check(board, data, name="pgd-at-s0.json", check_code=True):
    path = board["root"] / "leaderboards" / TRACK_ID / name
    return check_entry(data, where=name, root=board["root"], entry_path=path, check_code=check_code)


def _rejects(board, data, fragment, name="pgd-at-s0.json", check_code=True):
    with pytest.raises(EntryError) as info:
        _check(board, data, name, check_code=check_code)
    assert any(fragment in p for p in info.value.problems), info.value.problems
    return info.value.problems


def test_valid_entry_passes(board):
    entry = check_entry_file(board["entry_path"], board["root"])
    assert entry.id == "pgd-at-s0" and entry.track == TRACK_ID and entry.defense.name == "pgd-at"
    ev = entry.evaluations["best"]
    assert ev.attacks == ["fgsm", "pgd-2"] and ev.n_per_class == [5] * 10
    flags = board["root"] / ev.flags_file
    assert flags.is_file() and flags.parent == board["root"] / "leaderboards" / TRACK_ID / "flags"
    # the entry's numbers are the run's numbers
    run = json.loads((board["run_dir"] / "result.json").read_text())
    assert ev.per_class == {k: run["checkpoints"]["best"]["per_class"][k] for k in ev.per_class}
    assert main(["leaderboard", "check", "--root", str(board["root"]), str(board["entry_path"])]) == 0


def test_corrupt_json_is_rejected_with_position(board, tmp_path):
    bad = board["root"] / "leaderboards" / TRACK_ID / "broken.json"
    bad.write_text(board["entry_path"].read_text()[:200])
    try:
        with pytest.raises(EntryError, match=r"not valid JSON: .* at line \d+, column \d+"):
            check_entry_file(bad, board["root"])
        assert main(["leaderboard", "check", "--root", str(board["root"]), str(bad)]) == 1
    finally:
        bad.unlink()


def test_nan_and_unknown_keys_are_rejected(board, tmp_path):
    path = tmp_path / "leaderboards" / TRACK_ID / "pgd-at-s0.json"
    path.parent.mkdir(parents=True)
    path.write_text(board["entry_path"].read_text().replace('"seed": 0', '"seed": NaN', 1))
    with pytest.raises(EntryError, match="NaN is not a number JSON allows"):
        check_entry_file(path, board["root"])
    data = copy.deepcopy(board["entry"])
    data["trust_me"] = True
    _rejects(board, data, "unknown key 'trust_me'")
    data = copy.deepcopy(board["entry"])
    del data["cost"]
    _rejects(board, data, "missing key 'cost'")


def test_hand_edited_summary_is_rejected(board):
    data = copy.deepcopy(board["entry"])
    s = data["evaluations"]["best"]["summary"]["worst_case"]
    s["mean"] = s["mean"] + 0.05
    problems = _rejects(board, data, "summary.worst_case.mean is")
    assert any("but its per-class vector gives" in p for p in problems)


def test_hand_edited_per_class_vector_is_caught_by_counts_and_flags(board):
    data = copy.deepcopy(board["entry"])
    ev = data["evaluations"]["best"]
    # not a count out of 5 images
    ev["per_class"]["clean"][3] = 0.55
    _rejects(board, data, "per_class.clean[3] (Dress) = 0.55 is not a count out of its 5 test images")
    # a careful forger: a valid count, every summary recomputed; only the per-sample flags tell
    data = copy.deepcopy(board["entry"])
    ev = data["evaluations"]["best"]
    k = int(np.argmin(ev["per_class"]["clean"]))
    ev["per_class"]["clean"][k] = min(1.0, ev["per_class"]["clean"][k] + 0.2)
    ev["summary"]["clean"] = {**ev["summary"]["clean"], **summarize(np.array(ev["per_class"]["clean"]))}
    problems = _rejects(board, data, f"per_class.clean[{k}] is")
    assert any("but the per-sample flags give" in p for p in problems)


def test_worst_case_above_an_attack_is_rejected(board):
    data = copy.deepcopy(board["entry"])
    ev = data["evaluations"]["best"]
    ev["per_class"]["pgd-2"][2] = 0.0
    ev["per_class"]["worst_case"][2] = 0.2
    _rejects(board, data, "per_class.worst_case[2] (Pullover) = 0.2 exceeds per_class.pgd-2[2] = 0")


def test_wrong_track_eps_is_rejected(board):
    data = copy.deepcopy(board["entry"])
    data["threat"]["eps"] = 0.05
    _rejects(board, data, "threat eps is 0.05 but track fashion-mnist-linf uses eps 0.1")


def test_wrong_attack_suite_is_rejected(board):
    data = copy.deepcopy(board["entry"])
    for ev in data["evaluations"].values():
        ev["attacks"] = ["pgd-2"]
        ev["worst_case_over"] = ["pgd-2"]
        del ev["per_class"]["fgsm"], ev["summary"]["fgsm"]
        ev["flags_file"] = None
    _rejects(board, data, "attack suite differs from track fashion-mnist-linf's (missing fgsm; the track runs fgsm, pgd-2)")


def test_wrong_test_size_is_rejected(board):
    data = copy.deepcopy(board["entry"])
    data["evaluations"]["best"]["n_per_class"] = [4] * 10
    problems = _rejects(board, data, "test images per class are [4, 4, 4, 4, 4, 4, 4, 4, 4, 4] but track "
                                     "fashion-mnist-linf evaluates 5 per class")
    assert any("40 test images but track fashion-mnist-linf evaluates 50" in p for p in problems)


def test_changed_training_budget_is_rejected(board):
    data = copy.deepcopy(board["entry"])
    data["train_config"]["epochs"] = 3
    _rejects(board, data, "train_config.epochs is 3 but track fashion-mnist-linf fixes it to 1")


def test_fidelity_is_recorded_and_one_per_track(board):
    """The run's fidelity reaches result.json and the entry; a track runs every entry with one fidelity."""
    run = json.loads((board["run_dir"] / "result.json").read_text())
    assert run["fidelity"] == "paper" and board["entry"]["defense"]["fidelity"] == "paper"
    assert board["entry"]["train_config"]["fidelity"] == "paper"
    data = copy.deepcopy(board["entry"])
    data["train_config"]["fidelity"] = "released"
    _rejects(board, data, "defense.fidelity is 'paper' but the run trained with fidelity 'released'")
    data["defense"]["fidelity"] = "released"
    _rejects(board, data, "track fashion-mnist-linf runs every entry with fidelity 'paper'")
    old = copy.deepcopy(board["entry"])  # an entry from before the switch: no fidelity anywhere, i.e. paper
    del old["defense"]["fidelity"], old["train_config"]["fidelity"]
    _check(board, old)


def test_misplaced_entry_is_rejected(board):
    _rejects(board, copy.deepcopy(board["entry"]), "id 'pgd-at-s0' must be the file name", name="other.json")
    data = copy.deepcopy(board["entry"])
    data["track"] = "cifar10-linf"
    _rejects(board, data, "unknown track 'cifar10-linf'")


@pytest.mark.parametrize("field,value,fragment", [
    ("flags_file", "../../../etc/passwd", "escapes the repository ('..' is not allowed)"),
    ("flags_file", "/etc/passwd", "is an absolute path"),
    ("flags_file", "leaderboards\\..\\x.npz", "must use '/' separators"),
    ("code", "../outside.py", "escapes the repository"),
    ("code", "~/x.py", "is an absolute path"),
])
def test_path_escapes_are_rejected(board, field, value, fragment):
    data = copy.deepcopy(board["entry"])
    if field == "code":
        data["defense"]["code"] = value
    else:
        data["evaluations"]["best"]["flags_file"] = value
    _rejects(board, data, fragment)


def test_symlink_out_of_the_repository_is_rejected(board, tmp_path):
    outside = tmp_path / "secret.npz"
    shutil.copy(board["root"] / board["entry"]["evaluations"]["best"]["flags_file"], outside)
    link = board["root"] / "leaderboards" / TRACK_ID / "flags" / "link.npz"
    link.symlink_to(outside)
    try:
        data = copy.deepcopy(board["entry"])
        data["evaluations"]["best"]["flags_file"] = f"leaderboards/{TRACK_ID}/flags/link.npz"
        _rejects(board, data, "resolves outside the repository")
    finally:
        link.unlink()


def test_missing_defense_code_is_rejected(board):
    data = copy.deepcopy(board["entry"])
    data["defense"]["code"] = "defenses/not_there.py"
    _rejects(board, data, "defense.code 'defenses/not_there.py' does not exist in the repository")
    _check(board, data, check_code=False)  # a leaderboard-only fork: the code check is a separate flag
    data["defense"]["code"] = "../outside.py"
    _rejects(board, data, "escapes the repository", check_code=False)  # paths stay checked


def test_check_works_in_a_leaderboard_only_fork(tmp_path, capsys):
    """A directory holding only leaderboards/: every committed entry passes; --check-code asks for the code."""
    fork = tmp_path / "fork"
    shutil.copytree(REPO / "leaderboards", fork / "leaderboards")
    for restore in (lambda root: None, restore_v1):  # the committed entries, then the archived version-1 ones
        restore(fork)
        assert main(["leaderboard", "check", "--root", str(fork)]) == 0
        out = capsys.readouterr().out
        assert "REJECT" not in out and out.startswith("ok ")
    assert main(["leaderboard", "check", "--root", str(fork), "--check-code"]) == 1
    assert "does not exist in the repository" in capsys.readouterr().out


def test_submit_and_build_need_a_root_outside_a_checkout(board, tmp_path, monkeypatch, capsys):
    """Without leaderboards/ in the current directory, submit and build refuse rather than write into the package."""
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in (REPO / "leaderboards" / TRACK_ID).iterdir())
    assert main(["leaderboard", "submit", str(board["run_dir"]), "--track", TRACK_ID, "--id", "x-s0"]) == 2
    assert "has no leaderboards/; run this from your rfbench checkout or leaderboard fork, or pass --root" in \
        capsys.readouterr().err
    assert main(["leaderboard", "build"]) == 2
    assert sorted(p.name for p in (REPO / "leaderboards" / TRACK_ID).iterdir()) == before
    assert main(["leaderboard", "build", "--root", str(tmp_path)]) == 2  # a --root without leaderboards/


def test_submit_refuses_an_entry_identical_to_a_committed_one(board, capsys):
    """The same run under another id: refused; with --allow-identical written, and check and the page say so."""
    with pytest.raises(RfbenchError, match="per-sample predictions equal those of the committed entry pgd-at-s0"):
        submit(board["run_dir"], board["track"], board["root"], entry_id="twin-s0", code="https://example.org/t.py")
    target = board["root"] / "leaderboards" / TRACK_ID / "twin-s0.json"
    assert not target.exists()
    try:
        submit(board["run_dir"], board["track"], board["root"], entry_id="twin-s0", code="https://example.org/t.py",
               allow_identical=True)
        assert main(["leaderboard", "check", "--root", str(board["root"])]) == 0
        assert f"{TRACK_ID}/twin-s0 is identical to pgd-at-s0" in capsys.readouterr().out
        build(board["root"])
        page = (board["root"] / "leaderboards" / TRACK_ID / "README.md").read_text()
        assert "[twin-s0](twin-s0.json) (pgd-at): identical to pgd-at-s0" in page
        assert "[twin-s0](twin-s0.json) |" not in page  # not in the ranked table
    finally:
        target.unlink(missing_ok=True)
        for f in (board["root"] / "leaderboards" / TRACK_ID / "flags").glob("twin-s0-*.npz"):
            f.unlink()


def test_explicit_flags_file_is_used(board, tmp_path):
    """`--flags` recomputes from the given file: another run's flags do not match this entry."""
    data = copy.deepcopy(board["entry"])
    for ev in data["evaluations"].values():
        ev["flags_file"] = None
    with pytest.raises(EntryError, match="no per-sample flag file: an entry ranks only on evidence"):
        _check(board, data)  # no flags: the per-class vectors alone are no evidence
    from rfbench.benchmark.eval.flags import SampleFlags

    flags = SampleFlags.load(board["root"] / board["entry"]["evaluations"]["best"]["flags_file"])
    flags.clean_pred = np.where(flags.clean_pred == flags.y, (flags.y + 1) % 10, flags.clean_pred)  # all wrong
    other = tmp_path / "other.npz"
    flags.save(other)
    with pytest.raises(EntryError, match="but the per-sample flags give 0"):
        check_entry(data, where="x", root=board["root"], entry_path=board["entry_path"], flags={"best": other})


def test_submit_refuses_to_overwrite(board):
    with pytest.raises(RfbenchError, match="exists; choose another --id or pass --force"):
        submit(board["run_dir"], board["track"], board["root"], code="https://example.org/pgd-at.py")


def test_build_renders_ranked_pages_and_heatmap(board):
    paths = build(board["root"])
    index = (board["root"] / "leaderboards" / "README.md").read_text()
    page = (board["root"] / "leaderboards" / TRACK_ID / "README.md").read_text()
    png = board["root"] / "leaderboards" / TRACK_ID / "heatmap.png"
    assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"[{TRACK_ID}]({TRACK_ID}/README.md)" in index and "PGD-AT" in index
    wc = board["entry"]["evaluations"]["best"]["summary"]["worst_case"]
    assert "[pgd-at-s0](pgd-at-s0.json)" in page
    assert f"{100 * wc['worst']:.1f}" in page and f"{100 * wc['mean']:.1f}" in page
    assert "0 (CPU" in page  # CPU runs cost no GPU-hours
    from rfbench.benchmark.leaderboard.ranking import RULE

    assert RULE in page and RULE in index and "rank: worst 20%" in page and "95% interval" in page


def test_defense_code_path_points_into_this_repository():
    assert defense_code_path("trades", REPO) == "defenses/trades.py"
    with pytest.raises(RfbenchError, match="outside the repository"):
        defense_code_path("trades", REPO / "leaderboards")


def test_shipped_tracks_are_consistent():
    """Each track's protocol names exactly the attacks its eval suite runs, at its eps, on its test-set size."""
    from rfbench.attacks.spec import Threat, build_attacks

    tracks = {t.id: t for t in list_tracks(REPO)}
    assert set(tracks) == {"cifar10-linf", "cifar10-linf-fast", "cifar10-lt50-linf", "cifar100-lt10-linf", "fashion-mnist-linf",
                           "fashion-mnist-lt50-linf"}
    for t in tracks.values():
        p, ev = t.info.protocol, t.run.eval
        assert math.isclose(from_dict(EvalConfig, ev).eps, p.eps), t.id
        assert ev.get("n_per_class") in (None, p.n_per_class), t.id
        threat = Threat(norm=p.norm, eps=p.eps, steps=20, alpha=p.eps / 4)  # docs/protocol.md eval PGD: 20 steps, step eps/4
        labels = [a.label for a in build_attacks(ev["attacks"], torch.nn.Identity(), threat)]
        assert labels == p.attacks, t.id
        classes = 100 if "cifar100" in p.dataset else 10
        assert p.test_size == p.n_per_class * classes
        assert t.train_config_for("pgd-at")["dataset"] == p.dataset and t.train_config_for("pgd-at")["model"] == p.model
    assert find_track(TRACK_ID, REPO).info.hardware == "cpu"


def test_shipped_entries_pass_check():
    """Every entry committed to the repository passes `rfbench leaderboard check` (what CI runs)."""
    entries = sorted((REPO / "leaderboards").glob("*/*.json"))
    for path in entries:
        check_entry_file(path, REPO, check_code=True)


# --- rfbench leaderboard compare: does a rerun reproduce the committed entries? ---------------------------------


def test_tolerance_by_hand():
    """Three committed seeds: the seeds' sd dominates; one seed at accuracy 0: the Agresti-Coull test-set floor."""
    from rfbench.benchmark.leaderboard.compare import tolerance

    s_seed, s_test, tol = tolerance([0.5, 0.6, 0.7], 0.6, 100, k=2.0)
    assert s_seed == pytest.approx(0.1)
    assert s_test == pytest.approx(math.sqrt((62 / 104) * (42 / 104) / 100))
    assert tol == pytest.approx(2 * 0.1 * math.sqrt(1 + 1 / 3))
    s_seed, s_test, tol = tolerance([0.0], 0.0, 100, k=2.0)
    assert s_seed is None and s_test == pytest.approx(math.sqrt((2 / 104) * (102 / 104) / 100))
    assert tol == pytest.approx(2 * s_test * math.sqrt(2)) and tol > 0.03  # a 0% worst class may come back as 1-3%


def test_compare_a_rerun_of_the_committed_run(board, capsys):
    """The run behind an entry reproduces it exactly; the CLI says so and exits 0."""
    from rfbench.benchmark.leaderboard.compare import compare_run

    report = compare_run(board["run_dir"], board["track"], board["root"])
    assert report.ok and report.same_seed_identical is True and [e.id for e in report.committed] == ["pgd-at-s0"]
    assert [r.metric for r in report.rows] == ["mean robust", "worst-class robust", "clean"]
    assert all(r.diff == 0 for r in report.rows)
    summary = board["entry"]["evaluations"]["best"]["summary"]
    assert report.rows[0].ours == summary["worst_case"]["mean"] and report.rows[2].ours == summary["clean"]["mean"]
    out_json = board["root"] / "compare.json"
    assert main(["leaderboard", "compare", str(board["run_dir"]), "--track", TRACK_ID, "--root", str(board["root"]),
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "REPRODUCED" in out and "per-class results identical" in out
    assert json.loads(out_json.read_text())["ok"] is True


def test_compare_reports_a_number_outside_the_tolerance(board, monkeypatch, capsys):
    from rfbench.benchmark.leaderboard import compare

    real = compare.compare_run(board["run_dir"], board["track"], board["root"])
    row = compare.Comparison("mean robust", ours=0.9, committed=(0.5, 0.52, 0.48), sigma_seed=0.02, sigma_test=0.05,
                             tolerance=0.1)
    assert row.diff == pytest.approx(0.4) and not row.ok
    bad = compare.Report(**{**real.__dict__, "rows": (row, *real.rows[1:]), "same_seed_identical": None})
    assert not bad.ok and "NOT REPRODUCED" in compare.render(bad) and "OUTSIDE" in compare.render(bad)
    monkeypatch.setattr(compare, "compare_run", lambda *a, **k: bad)
    assert main(["leaderboard", "compare", str(board["run_dir"]), "--track", TRACK_ID, "--root", str(board["root"])]) == 1
    assert "NOT REPRODUCED" in capsys.readouterr().out


def test_compare_needs_a_committed_entry_of_the_same_defense(board, tmp_path):
    """A hand-edited committed entry fails check and is no reference; a missing one is a clear error."""
    from rfbench.benchmark.leaderboard.compare import compare_run

    root = tmp_path / "repo"
    shutil.copytree(board["root"] / "leaderboards", root / "leaderboards")
    entry_path = root / "leaderboards" / TRACK_ID / "pgd-at-s0.json"
    data = json.loads(entry_path.read_text())
    data["evaluations"]["best"]["summary"]["worst_case"]["mean"] += 0.05
    entry_path.write_text(json.dumps(data))
    with pytest.raises(RfbenchError, match="no committed entry for defense 'pgd-at'"):
        compare_run(board["run_dir"], load_track(root / "leaderboards" / TRACK_ID / "track.yaml"), root)


def test_shipped_entry_moved_to_the_other_cpu_track_is_rejected(tmp_path):
    """A balanced-track entry relabelled as a long-tail entry fails on the training set the track fixes."""
    root = tmp_path / "repo"
    for d in ("leaderboards", "defenses"):
        shutil.copytree(REPO / d, root / d)
    restore_v1(root)  # the archived version-1 entries, back on their version-1 tracks
    src = root / "leaderboards" / TRACK_ID / "pgd-at-s0.json"
    data = json.loads(src.read_text())
    data["track"] = "fashion-mnist-lt50-linf"
    target = root / "leaderboards" / "fashion-mnist-lt50-linf" / "pgd-at-s0.json"
    with pytest.raises(EntryError) as info:
        check_entry(data, where=target.name, root=root, entry_path=target)
    assert any("train_config.imbalance_ratio is" in p and "fixes it to 50" in p for p in info.value.problems), \
        info.value.problems
