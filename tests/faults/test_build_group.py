"""``rfbench leaderboard build`` replaces its pages as one group: a kill at any point leaves the old pages or the new.

The fork holds two committed Fashion-MNIST tracks cut down to a few entries.  The *old* pages are
built from it; then entries are removed (one of three from one track, the only one of the other, whose
heat map must go), and the *new* pages are those a build of that state writes.  A build killed with
``SIGKILL`` at seeded random moments must leave the old pages byte for byte, or a committed journal
whose completion gives the new pages; the next build must then leave no temporary file and no staging
directory.  The killed builds are processes forked from one that has done the imports, so that the
random moments fall inside the build, not in the interpreter's start-up.  A kill after every single
rename of the swap is simulated in-process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from tiny_runs import REPO

from rfbench.benchmark.cli import main
from rfbench.benchmark.leaderboard import pagegroup
from rfbench.benchmark.leaderboard.pagegroup import JOURNAL, STAGE, finish_interrupted, site_stage

TRACKS = {"fashion-mnist-linf": ("pgd-at-s0", "trades-s0", "standard-s0"), "fashion-mnist-lt50-linf": ("pgd-at-s0",)}
GONE = {"fashion-mnist-linf": "trades-s0", "fashion-mnist-lt50-linf": "pgd-at-s0"}  # removed between old and new
KILL_SEED, KILLS = 2026, 6
# a process that imports once, then forks one build per JSON argv line read: prints the child's pid, then its status
FORK_SERVER = ("import json, os, sys\n"
               "import matplotlib.pyplot\n"
               "import rfbench.benchmark.leaderboard.build, rfbench.benchmark.leaderboard.html\n"
               "from rfbench.benchmark.cli import main\n"
               "print('ready', flush=True)\n"
               "for line in sys.stdin:\n"
               "    pid = os.fork()\n"
               "    if pid == 0:\n"
               "        null = os.open(os.devnull, os.O_WRONLY)\n"
               "        os.dup2(null, 1)\n"
               "        os.dup2(null, 2)\n"
               "        os._exit(main(json.loads(line)))\n"
               "    print(pid, flush=True)\n"
               "    print(os.waitpid(pid, 0)[1], flush=True)\n")


def _fork(root: Path) -> Path:
    """A leaderboard root with the tracks and entries of ``TRACKS`` (their flag files included)."""
    (root / "leaderboards").mkdir(parents=True)
    shutil.copytree(REPO / "leaderboards" / "papers", root / "leaderboards" / "papers")
    for track, ids in TRACKS.items():
        src, dst = REPO / "leaderboards" / track, root / "leaderboards" / track
        (dst / "flags").mkdir(parents=True)
        shutil.copy(src / "track.yaml", dst)
        for eid in ids:
            shutil.copy(src / f"{eid}.json", dst)
            for flags in (src / "flags").glob(f"{eid}-*.npz"):
                shutil.copy(flags, dst / "flags")
    return root


def _drop_entries(root: Path) -> None:
    for track, eid in GONE.items():
        d = root / "leaderboards" / track
        (d / f"{eid}.json").unlink()
        for flags in (d / "flags").glob(f"{eid}-*.npz"):
            flags.unlink()


def _build_argv(root: Path) -> list[str]:
    return ["leaderboard", "build", "--html", str(root / "site"), "--root", str(root)]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, but the lock file and what a killed build may leave to the next."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not (p.name.endswith(".rfbench.lock") or _temporary(p) or f"/{STAGE}/" in f"/{rel}"
                                or rel.startswith(".site.build")):
            out[rel] = p.read_bytes()
    return out


def _temporary(path: Path) -> bool:
    """A temporary file of an atomic write (``.NAME.XXXXXXXX.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if _temporary(p) or p.name in (STAGE, site_stage(root / "site").name))


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """(old state, its tree; new tree): the old pages beside the reduced entries, and what a build of those gives."""
    base = tmp_path_factory.mktemp("group")
    old = _fork(base / "old")
    assert main(_build_argv(old)) == 0
    _drop_entries(old)
    new = base / "new"
    shutil.copytree(old, new)
    assert main(_build_argv(new)) == 0
    old_tree, new_tree = _tree(old), _tree(new)
    assert not _leftovers(new)
    changed = {k for k in old_tree.keys() | new_tree.keys() if old_tree.get(k) != new_tree.get(k)}
    # the group really changes: the index, both track pages, one heat map rewritten, one removed, site pages
    assert {"leaderboards/README.md", "leaderboards/fashion-mnist-linf/README.md",
            "leaderboards/fashion-mnist-linf/heatmap.png", "leaderboards/fashion-mnist-lt50-linf/README.md",
            "leaderboards/fashion-mnist-lt50-linf/heatmap.png", "site/index.html"} <= changed
    assert "leaderboards/fashion-mnist-lt50-linf/heatmap.png" not in new_tree
    return old, old_tree, new_tree


def _copy(state: Path, where: Path) -> Path:
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(state, where)
    return where


def _assert_old_or_new(root: Path, old_tree: dict, new_tree: dict, finish: bool = True) -> str:
    """What a kill left: without a commit journal exactly the old pages (or the new, when the build had finished);
    with one, each page old or new, and (``finish``) finishing the journal, the next build's first step, gives the
    new pages."""
    got = _tree(root)
    if not (root / "leaderboards" / STAGE / JOURNAL).is_file():
        assert got in (old_tree, new_tree), "a kill before the commit point changed the pages"
        return "old" if got == old_tree else "new"
    assert all(got.get(k) in (old_tree.get(k), new_tree.get(k)) for k in got.keys() | new_tree.keys())
    if finish:
        assert finish_interrupted(root / "leaderboards") == "finished the pages of an interrupted build"
        assert _tree(root) == new_tree, "finishing the committed swap did not give the new pages"
    return "committed"


def _rebuild_is_new_and_clean(root: Path, new_tree: dict, capsys) -> None:
    assert main(_build_argv(root)) == 0
    capsys.readouterr()
    assert _tree(root) == new_tree
    assert not _leftovers(root), "the next build left temporary files or staging directories"


@pytest.fixture
def fork_server():
    """A process that has imported rfbench and forks a fresh build per request (see ``FORK_SERVER``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def _forked_build(server: subprocess.Popen, root: Path, kill_after: float | None = None) -> tuple[int, float]:
    """Run one build of ``root`` in a process forked by ``server``, ``SIGKILL`` it after ``kill_after`` seconds
    (unless it has finished); returns its wait status and the seconds it ran."""
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(json.dumps(_build_argv(root)) + "\n")
    server.stdin.flush()
    pid, t0 = int(server.stdout.readline()), time.monotonic()
    if kill_after is not None:
        time.sleep(kill_after)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    status = int(server.stdout.readline())
    return status, time.monotonic() - t0


@pytest.mark.slow
def test_a_build_killed_at_random_moments_leaves_the_old_pages_or_the_new(states, tmp_path, fork_server, capsys):
    old, old_tree, new_tree = states
    work = tmp_path / "work"
    status, span = _forked_build(fork_server, _copy(old, work))
    assert status == 0 and _tree(work) == new_tree
    rng, seen = random.Random(KILL_SEED), []
    for _ in range(KILLS):
        delay = rng.uniform(0, span)
        status, _ = _forked_build(fork_server, _copy(old, work), kill_after=delay)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert killed or status == 0
        outcome = _assert_old_or_new(work, old_tree, new_tree) if killed else "finished"
        if (work / "leaderboards" / STAGE).exists():  # killed inside the build, with pages staged
            outcome += ", staged pages left"
        seen.append((round(delay / span, 2), outcome))
        _rebuild_is_new_and_clean(work, new_tree, capsys)
    print(f"build {span:.2f} s; kills at these fractions of it left: {seen}")
    assert sum(outcome != "finished" for _, outcome in seen) >= KILLS - 1


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even except-Exception clean-ups)."""


def test_a_kill_after_every_rename_of_the_swap_is_finished_by_the_next_build(states, tmp_path, monkeypatch, capsys,
                                                                              caplog):
    """Killed at its commit point, a build leaves the journal and every staged page; from that state, a kill after
    the k-th rename of the swap (for every k) leaves each page old or new, and finishing gives the new group."""
    old, old_tree, new_tree = states
    work, committed = _copy(old, tmp_path / "work"), tmp_path / "committed"
    real_replace = os.replace
    monkeypatch.setattr(pagegroup, "_apply", _killed)  # killed right after the journal was written
    with pytest.raises(Killed):
        main(_build_argv(work))
    monkeypatch.undo()
    capsys.readouterr()
    assert _tree(work) == old_tree and (work / "leaderboards" / STAGE / JOURNAL).is_file()
    shutil.copytree(work, committed, symlinks=True)  # restored at the same path each time: the journal holds paths
    n_pages = len([p for p in (work / "leaderboards" / STAGE / "pages").rglob("*") if p.is_file()]) + len(
        [p for p in site_stage(work / "site").rglob("*") if p.is_file()])
    assert n_pages >= 10  # 3 Markdown pages, a heat map and the site's pages
    outcomes = []
    for k in range(n_pages + 1):
        _copy(committed, work)
        done: list = []

        def replace(src, dst):
            if len(done) == k:
                raise Killed
            done.append(dst)
            return real_replace(src, dst)

        monkeypatch.setattr(pagegroup.os, "replace", replace)
        if k == n_pages:  # after the last rename: killed while removing the staging directories
            monkeypatch.setattr(pagegroup, "shutil", types.SimpleNamespace(rmtree=_killed))
        with pytest.raises(Killed):
            finish_interrupted(work / "leaderboards")
        monkeypatch.undo()
        outcomes.append(_assert_old_or_new(work, old_tree, new_tree))
        assert not _leftovers(work)
    assert outcomes == ["committed"] * (n_pages + 1)
    # and the next build, not the test, finishes an interrupted swap first
    _copy(committed, work)
    with caplog.at_level(logging.INFO, logger=pagegroup.__name__):
        _rebuild_is_new_and_clean(work, new_tree, capsys)
    assert "finished the pages of an interrupted build" in caplog.text
    # a kill in the commit's own removal of the staging directories (after every rename)
    work = _copy(old, tmp_path / "work2")
    monkeypatch.setattr(pagegroup, "shutil", types.SimpleNamespace(rmtree=_killed))
    with pytest.raises(Killed):
        main(_build_argv(work))
    monkeypatch.undo()
    capsys.readouterr()
    assert _tree(work) == new_tree
    _rebuild_is_new_and_clean(work, new_tree, capsys)


def _killed(*_args, **_kw):
    raise Killed


def test_a_kill_before_the_commit_point_leaves_the_old_pages(states, tmp_path, monkeypatch, capsys):
    old, old_tree, new_tree = states
    work = _copy(old, tmp_path / "work")
    real_write = pagegroup.atomic_write_json

    def write(path, obj):
        if Path(path).name == JOURNAL:
            raise Killed
        return real_write(path, obj)

    monkeypatch.setattr(pagegroup, "atomic_write_json", write)
    with pytest.raises(Killed):
        main(_build_argv(work))
    monkeypatch.undo()
    capsys.readouterr()
    assert _tree(work) == old_tree  # every page staged, none moved
    assert (work / "leaderboards" / STAGE).is_dir() and site_stage(work / "site").is_dir()
    _rebuild_is_new_and_clean(work, new_tree, capsys)


def test_temporary_files_of_killed_writes_are_removed_by_the_next_build(states, tmp_path, capsys):
    """What a SIGKILL inside an atomic write leaves (``.NAME.XXXXXXXX.tmp``) beside the pages goes with the next build."""
    old, _, new_tree = states
    work = _copy(old, tmp_path / "work")
    planted = [work / "leaderboards" / ".README.md.k1ll3d00.tmp",
               work / "leaderboards" / "fashion-mnist-linf" / ".heatmap.png.abcd1234.tmp",
               work / "leaderboards" / "fashion-mnist-lt50-linf" / ".pgd-at-s0.json.zz99zz99.tmp",  # a killed submit's
               work / "leaderboards" / "fashion-mnist-linf" / "flags" / ".pgd-at-s0-best.npz.f1a9f1a9.tmp",
               work / "site" / ".index.html.q1w2e3r4.tmp",
               work / "site" / "fashion-mnist-linf" / ".index.html.a1b2c3d4.tmp"]
    for p in planted:
        p.write_bytes(b"half a page")
    kept = work / "leaderboards" / "notes.tmp"  # not a name rfbench's writes use: somebody's file, kept
    kept.write_text("mine")
    _rebuild_is_new_and_clean(work, {**new_tree, "leaderboards/notes.tmp": b"mine"}, capsys)
    assert not any(p.exists() for p in planted) and kept.read_text() == "mine"


def test_a_forged_journal_moves_nothing_outside_the_staging_directories(tmp_path):
    """The journal is data: names with ``..`` or absolute paths, and removals other than heat maps, are ignored."""
    boards = tmp_path / "repo" / "leaderboards"
    (boards / STAGE / "pages").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (boards / STAGE / "pages" / "evil").write_text("overwritten")
    (boards / "t").mkdir()
    (boards / "t" / "track.yaml").write_text("keep me too")
    outside = tmp_path / "home"  # a linked track folder that leads out of the leaderboard
    outside.mkdir()
    (outside / "heatmap.png").write_text("keep")
    (boards / "linked").symlink_to(outside)
    (boards / STAGE / "pages" / "linked").mkdir()
    (boards / STAGE / "pages" / "linked" / "authorized_keys").write_text("planted")
    (boards / STAGE / JOURNAL).write_text(json.dumps({
        "site": None, "pages": ["../../victim.txt", "/etc/passwd", "evil/../../x", "linked/authorized_keys"],
        "remove": ["t/track.yaml", "../victim.txt", str(victim), "linked/heatmap.png"]}))
    assert finish_interrupted(boards) == "finished the pages of an interrupted build"
    assert victim.read_text() == "keep me" and (boards / "t" / "track.yaml").read_text() == "keep me too"
    assert not (boards / STAGE).exists() and not (tmp_path / "x").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["heatmap.png"]
