"""An evaluation's files as one group: ``--overwrite`` swaps them in with a journal, readers refuse a mix.

``rfbench eval --overwrite`` writes the new evaluation into the hidden sibling
``.OUT.overwrite`` (:func:`staging_dir`).  When it is complete, :func:`swap_in`

1. writes ``.OUT.overwrite/SWAP`` (atomically): the commit point, listing the files to move;
2. renames the tables and plots, then ``result.json``, then ``flags.npz`` last into ``OUT``;
3. removes old outputs the new evaluation did not write, then the staging directory.

A kill before step 1 leaves the old group untouched (the next ``--overwrite`` resumes the
staged batches, see :func:`resumable_staging`); a kill after it is finished by the next
``rfbench eval`` of ``OUT`` (:func:`finish_swap`), so the group ends as the new one.  In
between, ``result.json`` records the SHA-256 of its ``flags.npz``
(``provenance.flags_sha256``), and :func:`check_group` (used by ``rfbench report``) refuses a
``result.json`` next to a ``flags.npz`` of another evaluation.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from rfbench.core.errors import RfbenchError
from rfbench.core.io.atomic import atomic_write_text, fsync_dir
from rfbench.core.io.digest import file_sha256

log = logging.getLogger(__name__)

FLAGS_FILE = "flags.npz"
RESULT_FILE = "result.json"
OUTPUT_FILES = (FLAGS_FILE, RESULT_FILE, "per_class.csv", "per_class.md", "per_class.png", "confusion_flow.png")
JOURNAL = "SWAP"


def staging_dir(out_dir: Path) -> Path:
    """Where ``--overwrite`` writes the new evaluation of ``out_dir``: the hidden sibling ``.NAME.overwrite``."""
    return out_dir.parent / f".{out_dir.name}.overwrite"


def _move_order(names: list[str]) -> list[str]:
    """Tables and plots first, then ``result.json``, then ``flags.npz``: every mixed state has the old flags."""
    return sorted(names, key=lambda n: (n == FLAGS_FILE, n == RESULT_FILE))


def _complete(staged: Path, out_dir: Path, names: list[str]) -> None:
    for n in _move_order(names):
        if (staged / n).exists():
            os.replace(staged / n, out_dir / n)
    for n in OUTPUT_FILES:
        if n not in names and (out_dir / n).exists():
            (out_dir / n).unlink()
    fsync_dir(out_dir)
    shutil.rmtree(staged, ignore_errors=True)


def swap_in(staged: Path, out_dir: Path) -> None:
    """Move the complete evaluation in ``staged`` over the old one in ``out_dir`` (see the module docstring)."""
    names = [n for n in OUTPUT_FILES if (staged / n).exists()]
    atomic_write_text(staged / JOURNAL, "\n".join(names) + "\n")  # the commit point
    _complete(staged, out_dir, names)


def finish_swap(out_dir: Path) -> bool:
    """Finish a swap into ``out_dir`` that a kill interrupted after its commit point; True when there was one."""
    staged = staging_dir(out_dir)
    journal = staged / JOURNAL
    if not journal.is_file():
        return False
    names = [n for n in journal.read_text().split() if n in OUTPUT_FILES]
    log.info("finishing the interrupted --overwrite of %s", out_dir)
    _complete(staged, out_dir, names)
    return True


def resumable_staging(out_dir: Path) -> Path:
    """The staging directory of ``out_dir``, kept for resuming: only an unfinished swap's leftovers are cleared."""
    staged = staging_dir(out_dir)
    if staged.exists() and not staged.is_dir():
        staged.unlink()
    return staged


def check_group(result_path: Path, result: dict) -> None:
    """Refuse ``result_path`` when the ``flags.npz`` beside it is not the one its ``result.json`` was built from."""
    want = (result.get("provenance") or {}).get("flags_sha256") if isinstance(result, dict) else None
    flags = Path(result_path).parent / FLAGS_FILE
    if not isinstance(want, str) or not flags.is_file():
        return  # an older result, or a result.json copied away from its flags
    if file_sha256(flags) != want:
        raise RfbenchError(f"{result_path} and {flags} come from different evaluations (an interrupted "
                           f"`eval --overwrite`?); run the same `rfbench eval ... --out {Path(result_path).parent}` "
                           "again to finish it")
