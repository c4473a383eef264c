"""Who was first: the order in which a track's entries entered the leaderboard repository.

The order comes from the repository's git history: the commit that first
added ``leaderboards/<track>/<id>.json``.  A submitter cannot rewrite the
history of the repository they open a pull request against, unlike the
``submitted`` field of their entry, which is never used for order.  An entry
that no commit has added yet (a pull request's new file) comes after every
committed one.  Outside a git checkout (or without ``git``) no entry has an
order and ties are broken by the rules in :mod:`~rfbench.benchmark.leaderboard.ranking`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

GIT_TIMEOUT_S = 60


def first_added(track_dir: Path, root: Path) -> dict[str, int]:
    """``{entry id: position of the commit that first added its file}`` (0 = the oldest), from ``git log``."""
    git = shutil.which("git")
    if git is None:
        return {}
    try:
        rel = track_dir.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return {}
    cmd = [git, "-c", "core.fsmonitor=false", "-C", str(root), "log", "--reverse", "--diff-filter=A", "--relative",
           "--no-renames", "--format=%x00commit", "--name-only", "--", rel]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:  # not a git repository
        return {}
    order: dict[str, int] = {}
    commit = -1
    for line in out.stdout.splitlines():
        if line == "\0commit":
            commit += 1
            continue
        path = Path(line)
        if line and path.parent.as_posix() == rel and path.suffix == ".json":
            order.setdefault(path.stem, commit)
    return order
