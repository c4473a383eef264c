"""Who was first: the order in which a track's entries entered the leaderboard repository.

The order comes from the repository's git history: the commit that first
added ``leaderboards/<track>/<id>.json``.  A submitter cannot rewrite the
history of the repository they open a pull request against, unlike the
``submitted`` field of their entry, which is never used for order.  An entry
that no commit has added yet (a pull request's new file) comes after every
committed one.

Outside a git checkout (or without ``git``, or before the first commit) the
order comes from the track's ledger, ``leaderboards/<track>/ledger.jsonl``,
which ``rfbench leaderboard submit`` appends to: one JSON line per submission
(``seq``, ``id``, the sha256 of the entry file written, and ``prev``, the
sha256 of the previous line), so a line edited, removed or reordered breaks
the chain; a broken ledger gives no order at all (:func:`read_ledger` says
where it breaks).  Without either, ties are broken by the rules in
:mod:`~rfbench.benchmark.leaderboard.ranking`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

GIT_TIMEOUT_S = 60
LEDGER = "ledger.jsonl"


def _line_sha(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def read_ledger(track_dir: Path) -> tuple[dict[str, int], str | None]:
    """``({entry id: its first line}, None)`` from a verified ledger, or ``({}, why)`` when its chain is broken."""
    from rfbench.core.errors import RfbenchError
    from rfbench.core.io.atomic import read_text_bounded

    path = track_dir / LEDGER
    if not path.is_file():
        return {}, None
    try:
        lines = read_text_bounded(path).splitlines()
    except RfbenchError as exc:
        return {}, f"{path.name}: {exc}"
    order: dict[str, int] = {}
    prev = ""
    for k, line in enumerate(lines):
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and rec.get("seq") == k and rec.get("prev") == prev and isinstance(rec.get("id"), str)
        except ValueError:
            ok = False
        if not ok:
            return {}, f"{path.name} line {k + 1} does not continue the chain (edited, removed or reordered lines)"
        order.setdefault(rec["id"], k)
        prev = _line_sha(line)
    return order, None


def append_ledger(track_dir: Path, entry_id: str, entry_sha256: str) -> None:
    """Append one submission to the track's ledger (atomically: the whole file is replaced).

    Writing the same entry file again (a rerun of an interrupted ``submit``) adds no line.
    """
    from rfbench.core.io import atomic_write_text

    path = track_dir / LEDGER
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if any(json.loads(line).get("id") == entry_id and json.loads(line).get("entry_sha256") == entry_sha256
           for line in lines if line.strip().startswith("{")):
        return
    rec = {"seq": len(lines), "id": entry_id, "entry_sha256": entry_sha256, "prev": _line_sha(lines[-1]) if lines else ""}
    atomic_write_text(path, "\n".join([*lines, json.dumps(rec, sort_keys=True)]) + "\n")


def entry_order(track_dir: Path, root: Path) -> dict[str, int]:
    """Who came first: git history when it records any entry of the track, else the verified ledger."""
    return first_added(track_dir, root) or read_ledger(track_dir)[0]


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
