"""A hostile submitter against the committed ``fashion-mnist-linf`` track: every attack builds its entry here.

Each test copies the track (two honest entries and their flags) into a temporary
repository and tampers with a copy.  What must hold: an entry ranks only on
evidence (flags on exactly the track's test images), the order among identical
entries comes from git history, and one hostile entry rejects only itself.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.eval.metrics import summarize
from rfbench.benchmark.leaderboard import EntryError, check_entry_file, load_track
from rfbench.benchmark.leaderboard.board import collect
from rfbench.benchmark.leaderboard.evidence import expected_subset
from rfbench.core.perclass import per_class_accuracy

REPO = Path(__file__).resolve().parents[1]
TRACK = "fashion-mnist-linf"
KEEP = ("pgd-at-s0", "dafa-s0")


@pytest.fixture
def repo(tmp_path):
    src = REPO / "leaderboards" / TRACK
    dst = tmp_path / "leaderboards" / TRACK
    (dst / "flags").mkdir(parents=True)
    shutil.copy(src / "track.yaml", dst / "track.yaml")
    for eid in KEEP:
        shutil.copy(src / f"{eid}.json", dst / f"{eid}.json")
        shutil.copy(src / "flags" / f"{eid}-best.npz", dst / "flags" / f"{eid}-best.npz")
    return tmp_path


def _track_dir(repo: Path) -> Path:
    return repo / "leaderboards" / TRACK


def _load(repo: Path, eid: str) -> dict:
    return json.loads((_track_dir(repo) / f"{eid}.json").read_text())


def _write(repo: Path, data: dict, eid: str | None = None) -> Path:
    path = _track_dir(repo) / f"{eid or data['id']}.json"
    path.write_text(json.dumps(data))
    return path


def _flags(repo: Path, eid: str = "pgd-at-s0") -> SampleFlags:
    return SampleFlags.load(_track_dir(repo) / "flags" / f"{eid}-best.npz")


def _set_vectors(data: dict, flags: SampleFlags) -> None:
    """Recompute the entry's per-class vectors and summaries from ``flags`` (what an adversary would do)."""
    ev = data["evaluations"]["best"]
    C = len(data["classes"])
    ok = {"clean": flags.clean_correct, **{a: flags.robust(a) for a in ev["attacks"]},
          "worst_case": flags.worst_case(ev["worst_case_over"])}
    ev["n_per_class"] = np.bincount(flags.y, minlength=C).tolist()
    for name, v in ok.items():
        vec = per_class_accuracy(v, flags.y, C)
        ev["per_class"][name] = vec.tolist()
        ev["summary"][name] = {k: v for k, v in summarize(vec).items()}


def _hostile(repo: Path, eid: str, flags: SampleFlags | None = None, raw: bytes | None = None,
             edit=None) -> Path:
    """A copy of pgd-at-s0 as ``eid``, with its own flag file (``flags`` or ``raw`` bytes) and ``edit`` applied."""
    data = _load(repo, "pgd-at-s0")
    data["id"] = eid
    rel = f"leaderboards/{TRACK}/flags/{eid}-best.npz"
    data["evaluations"]["best"]["flags_file"] = rel
    if flags is not None:
        flags.save(repo / rel)
    elif raw is not None:
        (repo / rel).write_bytes(raw)
    else:
        shutil.copy(_track_dir(repo) / "flags" / "pgd-at-s0-best.npz", repo / rel)
    if edit is not None:
        edit(data)
    return _write(repo, data)


def _problems(path: Path, root: Path) -> str:
    with pytest.raises(EntryError) as info:
        check_entry_file(path, root)
    return "; ".join(info.value.problems)


def test_the_copied_track_checks(repo):
    for eid in KEEP:
        check_entry_file(_track_dir(repo) / f"{eid}.json", repo)
    exp = expected_subset(load_track(_track_dir(repo) / "track.yaml"))
    assert len(exp.index) == 5000 and np.bincount(exp.y).tolist() == [500] * 10
    assert np.array_equal(_flags(repo).index, exp.index)  # the committed evaluation is the track's subset


def test_a_fabricated_entry_without_flags_is_refused_and_never_ranked(repo):
    data = _load(repo, "pgd-at-s0")
    data.update(id="fabricated", submitted="2000-01-01")
    ev = data["evaluations"]["best"]
    ev["flags_file"] = None
    for name in ev["per_class"]:
        vec = np.full(10, 1.0 if name == "clean" else 0.99)  # 495 of 500: a count
        ev["per_class"][name] = vec.tolist()
        ev["summary"][name] = summarize(vec)
    path = _write(repo, data)
    assert "no per-sample flag file" in _problems(path, repo)
    board = collect(load_track(_track_dir(repo) / "track.yaml"), repo)
    assert "fabricated.json" in board.rejected and "fabricated" not in [e.id for e in board.entries]


def test_cherry_picked_images_are_refused(repo):
    """The same images per class, but swapped for other test images of the same class the model got right."""
    flags = _flags(repo)
    exp = expected_subset(load_track(_track_dir(repo) / "track.yaml"))
    from rfbench.benchmark.data.registry import DataOptions, load_raw

    all_y = load_raw("fashion-mnist", DataOptions(test_only=True)).test.y.numpy()
    outside = np.setdiff1d(np.arange(len(all_y)), exp.index)
    broken = np.flatnonzero(~flags.worst_case(flags.labels))
    for row in broken:  # a "better" image of the same class, made robust
        c = flags.y[row]
        pick = outside[all_y[outside] == c][0]
        outside = outside[outside != pick]
        flags.index[row] = pick
        flags.clean_pred[row] = c
        flags.adv_pred[row] = c
        flags.ran[row] = True
    order = np.argsort(flags.index)
    for name in ("index", "y", "clean_pred", "adv_pred", "ran", "pert", "done"):
        setattr(flags, name, getattr(flags, name)[order])
    path = _hostile(repo, "cherry", flags=flags, edit=lambda d: _set_vectors(d, flags))
    assert "not the track's test subset" in _problems(path, repo)


def test_fewer_images_per_class_kept_from_a_larger_evaluation_are_refused(repo):
    flags = _flags(repo)
    keep = np.concatenate([np.flatnonzero(flags.y == c)[:10] for c in range(10)])
    small = SampleFlags(index=flags.index[keep], y=flags.y[keep], labels=flags.labels,
                        clean_pred=flags.clean_pred[keep], adv_pred=flags.adv_pred[keep], ran=flags.ran[keep],
                        pert=flags.pert[keep], done=flags.done[keep], meta=flags.meta)
    path = _hostile(repo, "few", flags=small, edit=lambda d: _set_vectors(d, small))
    assert "must be (5000,)" in _problems(path, repo)


def test_a_wrong_label_is_refused(repo):
    flags = _flags(repo)
    flags.y[7] = (flags.y[7] + 1) % 10
    path = _hostile(repo, "relabel", flags=flags, edit=lambda d: _set_vectors(d, flags))
    assert "the dataset labels it" in _problems(path, repo)


def test_reversed_classes_and_an_id_with_a_newline_are_refused(repo):
    path = _hostile(repo, "reversed", edit=lambda d: d["classes"].reverse())
    assert "names its classes" in _problems(path, repo)
    data = _load(repo, "pgd-at-s0")
    data["id"] = "pgd-at-s0\n"
    path = _write(repo, data, eid="newline")
    assert "must be letters, digits" in _problems(path, repo)


def test_a_worst_case_over_fewer_attacks_is_refused(repo):
    def edit(d):
        ev = d["evaluations"]["best"]
        ev["worst_case_over"] = ["fgsm"]
        _set_vectors(d, _flags(repo))
    path = _hostile(repo, "narrow", edit=edit)
    assert "ranks the worst case over all its attacks" in _problems(path, repo)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_copy_under_a_new_id_with_an_earlier_date_does_not_steal_the_rank(repo):
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "track")
    data = _load(repo, "dafa-s0")
    data.update(id="aaa-copy", submitted="2000-01-01")
    _write(repo, data)
    shutil.copy(_track_dir(repo) / "flags" / "dafa-s0-best.npz", _track_dir(repo) / "flags" / "aaa-copy-best.npz")
    data["evaluations"]["best"]["flags_file"] = f"leaderboards/{TRACK}/flags/aaa-copy-best.npz"
    _write(repo, data)
    track = load_track(_track_dir(repo) / "track.yaml")
    board = collect(track, repo)
    assert board.ranking is not None and board.ranking.row("aaa-copy").identical_to == "dafa-s0"
    assert "aaa-copy" not in [e.id for e in board.entries]
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "the copy")  # committed later: still the copy
    ranking = collect(track, repo).ranking
    assert ranking is not None and ranking.row("aaa-copy").identical_to == "dafa-s0"


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _members(flags: SampleFlags) -> dict:
    return dict(index=flags.index, y=flags.y, labels=np.array(flags.labels), clean_pred=flags.clean_pred,
                adv_pred=flags.adv_pred, ran=flags.ran, pert=flags.pert, done=flags.done,
                meta=np.array(json.dumps(flags.meta)))


def _header_bomb(flags: SampleFlags) -> bytes:
    """A flag file whose ``y`` header claims 2^40 int64 (8 TiB) in a few bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, arr in _members(flags).items():
            if name == "y":
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(head, {"descr": "<i8", "fortran_order": False,
                                                            "shape": (2**40,)})
                z.writestr("y.npy", head.getvalue() + b"\0" * 64)
            else:
                b = io.BytesIO()
                np.save(b, arr)
                z.writestr(f"{name}.npy", b.getvalue())
    return buf.getvalue()


def _deflate_bomb(flags: SampleFlags) -> bytes:
    """A small file whose ``y`` member declares 5000 labels but inflates to 400 MB of zeros after them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in _members(flags).items():
            b = io.BytesIO()
            np.save(b, arr)
            data = b.getvalue() + (b"\0" * (400 << 20) if name == "y" else b"")
            z.writestr(f"{name}.npy", data)
    return buf.getvalue()


HOSTILE = {
    "huge-count": lambda repo: _hostile(repo, "huge-count", edit=lambda d: d["evaluations"]["best"].update(
        n_per_class=[10**400] * 10)),
    "no-classes": lambda repo: _hostile(repo, "no-classes", edit=lambda d: d.update(classes=[])),
    "negative-y": lambda repo: _hostile(repo, "negative-y", raw=_npz(**{**_members(_flags(repo)), "y": np.where(
        np.arange(5000) == 3, -1, _flags(repo).y)})),
    "short-clean": lambda repo: _hostile(repo, "short-clean", raw=_npz(**{**_members(_flags(repo)),
                                                                         "clean_pred": _flags(repo).clean_pred[:10]})),
    "narrow-ran": lambda repo: _hostile(repo, "narrow-ran", raw=_npz(**{**_members(_flags(repo)),
                                                                       "ran": _flags(repo).ran[:, :2]})),
    "header-bomb": lambda repo: _hostile(repo, "header-bomb", raw=_header_bomb(_flags(repo))),
    "deflate-bomb": lambda repo: _hostile(repo, "deflate-bomb", raw=_deflate_bomb(_flags(repo))),
    "not-a-zip": lambda repo: _hostile(repo, "not-a-zip", raw=b"PK\x03\x04" + b"\xff" * 100),
    "evil-name": lambda repo: _hostile(repo, "evil-name", edit=lambda d: d["defense"].update(name="x.py:Evil\n<b>")),
}
REASONS = {"huge-count": "counts from 1 to", "no-classes": "classes are [] but fashion-mnist names its classes", "negative-y": "not classes",
           "short-clean": "'clean_pred' has shape (10,)", "narrow-ran": "'ran' has shape (5000, 2)",
           "header-bomb": "'y' has shape (1099511627776,)", "deflate-bomb": "'y' inflates to",
           "not-a-zip": "corrupt flag file", "evil-name": "is not a defense name"}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_one_hostile_entry_rejects_only_itself(repo, kind, capsys):
    path = HOSTILE[kind](repo)
    assert REASONS[kind] in _problems(path, repo)
    assert main(["leaderboard", "check", "--root", str(repo)]) == 1
    out = capsys.readouterr().out
    assert f"REJECT  {path}" in out and "Traceback" not in out
    assert all(f"ok      {_track_dir(repo) / f'{eid}.json'}" in out for eid in KEEP)
    board = collect(load_track(_track_dir(repo) / "track.yaml"), repo)
    assert set(board.rejected) == {path.name} and sorted(e.id for e in board.entries) == sorted(KEEP)


def test_a_deflate_bomb_is_refused_without_inflating_it(repo):
    """400 MB of zeros behind a 5000-label header: refused from the headers, peak traced memory stays small."""
    import tracemalloc

    path = HOSTILE["deflate-bomb"](repo)
    check_entry_file(_track_dir(repo) / "pgd-at-s0.json", repo)  # imports and the (cached) dataset read, first
    tracemalloc.start()
    try:
        assert "'y' inflates to" in _problems(path, repo)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy and zipfile buffers are traced; inflating the bomb would need 400 MB. The entry reader's bounded read
    # (read(64 MiB + 1)) briefly reserves its 64 MiB limit, so the bound asserted is 100 MB.
    assert peak < 100 * 2**20, peak


def test_all_hostile_entries_at_once_still_build_every_page(repo, capsys):
    for make in HOSTILE.values():
        make(repo)
    assert main(["leaderboard", "build", "--html", str(repo / "site"), "--root", str(repo)]) == 0
    assert (repo / "site" / "index.html").is_file()
    page = (_track_dir(repo) / "README.md").read_text()
    assert "pgd-at-s0" in page and "dafa-s0" in page
    assert main(["leaderboard", "check", "--root", str(repo)]) == 1
    out = capsys.readouterr().out
    assert out.count("REJECT") == len(HOSTILE)


def test_a_plugin_defense_is_data_checked_and_ranked_without_allow_code(repo, capsys):
    def edit(d):
        d["defense"].update(name="my_file.py:ClippedAT", code="my_file.py")
        d["train_config"]["defense"] = "my_file.py:ClippedAT"
        d["evaluations"]["best"]["per_class"]["clean"][0] -= 1 / 500  # not identical to pgd-at-s0
    flags = _flags(repo)
    row = int(np.flatnonzero((flags.y == 0) & flags.clean_correct)[0])
    flags.clean_pred[row] = 1

    def full(d):
        edit(d)
        _set_vectors(d, flags)
    path = _hostile(repo, "plugin-s0", flags=flags, edit=full)
    check_entry_file(path, repo)
    assert main(["leaderboard", "check", "--root", str(repo)]) == 0
    assert main(["leaderboard", "build", "--root", str(repo)]) == 0
    assert "plugin-s0" in (_track_dir(repo) / "README.md").read_text()
    assert "allow-code" not in capsys.readouterr().err


def test_without_the_dataset_an_entry_is_listed_unverified_not_crashed(repo, capsys):
    """The test images cannot be recomputed here: one line says so, everything else is still checked."""
    import yaml

    track_file = _track_dir(repo) / "track.yaml"
    data = yaml.safe_load(track_file.read_text())
    (repo / "empty").mkdir()
    data["train"]["data_root"] = str(repo / "empty")
    track_file.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["leaderboard", "check", "--root", str(repo)]) == 0
    out = capsys.readouterr().out
    assert out.count("unverif ") == len(KEEP) and "dataset fashion-mnist is not available here" in out
    board = collect(load_track(track_file), repo)
    assert set(board.unverified) == set(KEEP) and sorted(e.id for e in board.entries) == sorted(KEEP)
    bare = _hostile(repo, "no-flags", edit=lambda d: d["evaluations"]["best"].update(flags_file=None))
    assert "no per-sample flag file" in _problems(bare, repo)  # the rest is still enforced
