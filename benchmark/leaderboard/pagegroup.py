"""The pages of one ``rfbench leaderboard build`` as a group: staged, committed by a journal, then moved in.

A build writes ``leaderboards/README.md``, each track's ``README.md`` and ``heatmap.png`` and,
with ``--html DIR``, the web site.  Written one by one over the old pages, a kill would leave
some pages of the new build beside others of the old one (and the temporary file of the write
it interrupted).  Instead, :class:`PageGroup`

1. writes every page into a staging directory: ``leaderboards/.build/pages/`` for the Markdown
   pages and heat maps, the hidden sibling ``.DIR.build`` of the site (same file system as its
   destination, so the moves below are renames); ``leaderboards/.build/GROUP`` names the site
   first, so that a later build can discard its staging directory;
2. writes ``leaderboards/.build/SWAP`` (atomically): the commit point, listing every page to
   move and every old heat map to remove (a track whose last entry went);
3. renames the site's pages into ``DIR``, then the Markdown pages and heat maps into
   ``leaderboards/``, removes the heat maps listed, then the staging directories.

The next build, under the same leaderboard lock, first calls :func:`finish_interrupted`: a kill
before the commit point left the old pages untouched, and the staged pages (with any temporary
file of an interrupted write) are discarded; a kill after it is finished, so the pages end as
the new group.  Either way nothing of the killed build is left behind.

The journal is data that a build trusts only as far as it can check: page names must be
relative paths without ``..``, removals are ``<track>/heatmap.png`` only, only regular files
inside a staging directory are moved, and neither end of a move may lead out of its directory
through a linked sub-folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from rfbench.core.errors import RfbenchError
from rfbench.core.io.atomic import atomic_write_json, fsync_dir, read_json, remove_stale_temps

log = logging.getLogger(__name__)

STAGE = ".build"  # inside leaderboards/
PLAN = "GROUP"  # written first: where the site is staged
JOURNAL = "SWAP"  # written last: the commit point
HEATMAP = "heatmap.png"


def site_stage(site: Path) -> Path:
    """Where a build stages the web site ``site``: its hidden sibling ``.NAME.build``."""
    site = Path(os.path.abspath(site))
    return site.parent / f".{site.name}.build"


def _safe_rel(name: Any) -> PurePosixPath | None:
    """``name`` as a relative path inside its directory, or None for anything else (absolute, ``..``, not a string)."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("", ".", "..") for part in rel.parts):
        return None
    return rel


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path``, every link in it followed, lies in ``folder`` (a linked sub-folder cannot lead out)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _move_all(stage: Path, dest: Path, names: list[Any]) -> None:
    """Rename every staged regular file ``stage/NAME`` over ``dest/NAME`` (those already moved are gone from ``stage``)."""
    touched = set()
    for name in names:
        rel = _safe_rel(name)
        if rel is None:
            continue
        src, target = stage / rel, dest / rel
        if src.is_symlink() or not src.is_file() or not _within(src, stage) or not _within(target.parent, dest):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, target)
        touched.add(target.parent)
    for d in touched:
        fsync_dir(d)


def _remove_stage(path: Path) -> None:
    """Remove a staging directory (or whatever stands at its path: a link is removed, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _apply(journal: dict, boards: Path) -> None:
    """Step 3 of the module docstring, for a journal read back from disk or just written."""
    site = journal.get("site")
    if isinstance(site, str) and site:
        _move_all(site_stage(Path(site)), Path(site), list(journal.get("site_pages") or []))
    _move_all(boards / STAGE / "pages", boards, list(journal.get("pages") or []))
    for name in journal.get("remove") or []:
        rel = _safe_rel(name)
        if rel is not None and len(rel.parts) == 2 and rel.name == HEATMAP and _within((boards / rel).parent, boards):
            (boards / rel).unlink(missing_ok=True)


def _read_stage_file(path: Path) -> dict:
    """A staging directory's ``GROUP`` or ``SWAP`` as a dict; anything unreadable is an empty one (nothing to do)."""
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except RfbenchError:
        return {}
    return data if isinstance(data, dict) else {}


def remove_temps_below(folder: Path, depth: int) -> list[Path]:
    """Remove the temporary files of killed atomic writes in ``folder`` and the folders up to ``depth`` levels below.

    Links to folders are not followed.  The leaderboard holds pages and entries two levels down
    (``<track>/flags/``), the site one level down (``<track>/``); nothing deeper is rfbench's.
    """
    stale = remove_stale_temps(folder)
    if depth > 0 and folder.is_dir():
        for d in sorted(folder.iterdir()):
            if d.is_dir() and not d.is_symlink():
                stale += remove_temps_below(d, depth - 1)
    return stale


def finish_interrupted(boards: Path) -> str | None:
    """Finish or discard what a killed build left in ``boards`` (the ``leaderboards/`` folder); says which, or None.

    Also removes the temporary files that killed atomic writes left in ``boards`` and the folders
    below it (a killed ``submit``'s entry or flag file; the pages of an older rfbench's build).
    Call it only under the leaderboard's lock.
    """
    stage = boards / STAGE
    done = None
    if stage.is_dir() and not stage.is_symlink():
        journal = _read_stage_file(stage / JOURNAL)
        if journal:
            _apply(journal, boards)
            done = "finished the pages of an interrupted build"
        else:
            done = "discarded the staged pages of an interrupted build"
        for recorded in (journal, _read_stage_file(stage / PLAN)):
            site = recorded.get("site")
            if isinstance(site, str) and site:
                _remove_stage(site_stage(Path(site)))
    _remove_stage(stage)
    stale = remove_temps_below(boards, 2)
    if stale:
        log.info("removed %d temporary files that killed writes left in %s", len(stale), boards)
    if done:
        log.info("%s in %s", done, boards)
    return done


class PageGroup:
    """Collects one build's pages in staging directories; :meth:`commit` replaces the old pages with them as a group.

    ``boards`` is the ``leaderboards/`` folder, ``site`` the ``--html`` directory (or None).
    Write each page to :meth:`stage` of its final path; :meth:`remove` marks an old heat map
    for removal.  Nothing outside the staging directories changes before :meth:`commit`.
    """

    def __init__(self, boards: Path, site: Path | None = None):
        self.boards = Path(boards)
        self.site = Path(os.path.abspath(site)) if site is not None else None
        self.pages: list[str] = []
        self.site_pages: list[str] = []
        self.removals: list[str] = []
        finish_interrupted(self.boards)
        if self.site is not None:
            _remove_stage(site_stage(self.site))  # a build killed before it named this site in its plan
            remove_temps_below(self.site, 1)
        atomic_write_json(self.boards / STAGE / PLAN, {"site": str(self.site) if self.site else None})

    def stage(self, final: Path) -> Path:
        """Where to write the page whose final path is ``final`` (inside ``leaderboards/`` or the site)."""
        final = Path(os.path.abspath(final))
        if self.site is not None and final.is_relative_to(self.site):
            rel = final.relative_to(self.site).as_posix()
            self.site_pages.append(rel)
            return site_stage(self.site) / rel
        rel = final.relative_to(Path(os.path.abspath(self.boards))).as_posix()
        self.pages.append(rel)
        return self.boards / STAGE / "pages" / rel

    def remove(self, final: Path) -> None:
        """Remove the old heat map ``final`` (``leaderboards/<track>/heatmap.png``) when the group is committed."""
        self.removals.append(Path(os.path.abspath(final)).relative_to(Path(os.path.abspath(self.boards))).as_posix())

    def commit(self) -> None:
        """Write the journal (the commit point), move every staged page into place, and remove the staging directories."""
        journal = {"site": str(self.site) if self.site else None, "site_pages": self.site_pages,
                   "pages": self.pages, "remove": self.removals}
        atomic_write_json(self.boards / STAGE / JOURNAL, journal)
        _apply(journal, self.boards)
        if self.site is not None:
            _remove_stage(site_stage(self.site))
        _remove_stage(self.boards / STAGE)
        fsync_dir(self.boards)

    def discard(self) -> None:
        """Remove the staging directories of a build that failed before its commit point (the old pages stay)."""
        if self.site is not None:
            _remove_stage(site_stage(self.site))
        _remove_stage(self.boards / STAGE)
