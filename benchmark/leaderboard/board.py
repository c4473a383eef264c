"""A track's board: its checked entries, its ranking and the rejected files, with the texts both pages share.

The Markdown pages (:mod:`rfbench.benchmark.leaderboard.build`) and the web leaderboard
(:mod:`rfbench.benchmark.leaderboard.html`) both render a :class:`TrackBoard`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rfbench.benchmark.leaderboard.check import check_entry_file
from rfbench.benchmark.leaderboard.ranking import Ranking, rank
from rfbench.benchmark.leaderboard.schema import Entry, EntryError, Track
from rfbench.core.perclass import pct

log = logging.getLogger(__name__)


@dataclass
class TrackBoard:
    track: Track
    entries: list[Entry]  # ranked, in table order (identical entries excluded)
    rejected: dict[str, str]  # file name -> reason
    ranking: Ranking | None = None  # rank groups, intervals, identical entries (None: no entry)
    unverified: dict[str, str] = field(default_factory=dict)  # entry id -> what could not be verified on this machine
    audited: dict[str, str] = field(default_factory=dict)  # entry id -> its passing audit, in one line
    held: dict[str, str] = field(default_factory=dict)  # entry id -> why it is valid but not ranked (awaits an audit)


def collect(track: Track, root: Path) -> TrackBoard:
    """Check every entry of ``track`` in isolation (a rejected one is one line in ``rejected``), then rank the rest."""
    from rfbench.benchmark.leaderboard.audit import passing_record
    from rfbench.benchmark.leaderboard.history import entry_order

    entries, rejected, unverified, audited, held = [], {}, {}, {}, {}
    for path in sorted(track.path.parent.glob("*.json")):
        notes: list[str] = []
        try:
            entry = check_entry_file(path, root, notes=notes)
        except EntryError as exc:
            rejected[path.name] = "; ".join(exc.problems)
            log.warning("rejected %s: %s", path, rejected[path.name])
            continue
        if notes:
            unverified[entry.id] = "; ".join(notes)
        audit = passing_record(entry, track, root)
        if audit is not None:
            audited[entry.id] = audit
        elif track.info.require_audit:
            held[entry.id] = "not ranked until `rfbench leaderboard audit` passes (this track requires it)"
            continue
        entries.append(entry)
    if not entries:
        return TrackBoard(track=track, entries=[], rejected=rejected, unverified=unverified, audited=audited, held=held)
    ranking = rank(entries, track.info.protocol.checkpoint, root, baselines=track.info.baselines,
                   order=entry_order(track.path.parent, root), primary=track.info.primary_metric,
                   tail_classes=track.info.tail_classes)
    return TrackBoard(track=track, entries=[r.entry for r in ranking.ranked], rejected=rejected, ranking=ranking,
                      unverified=unverified, audited=audited, held=held)


def cost_text(e: Entry) -> str:
    c = e.cost
    if c.gpu_hours is not None:
        return f"{c.gpu_hours:.2f}"
    return f"0 (CPU {(c.train_seconds + c.eval_seconds) / 3600:.2f} h wall-clock)"


def noise_text(board: TrackBoard) -> str:
    """The track's seed spread, as used by the rank groups."""
    r = board.ranking
    if r is None:
        return ""
    if not r.seed_settings:
        return ("Seed spread: no defense has two or more seeds on this track yet, so the rank groups reflect "
                "test-set noise only.")
    sd = ", ".join(f"{label} {pct(r.seed_sd[key])}" for key, label in
                   (("worst", "worst class"), ("tail20", "worst 20%")))
    return (f"Seed spread (pooled standard deviation over the seeds of {', '.join(r.seed_settings)}, in points): "
            f"{sd}.")


def primary_text(board: TrackBoard) -> str:
    """What the table sorts by first, and why, for a track whose primary metric is not the worst class."""
    t = board.track.info
    if t.primary_metric == "worst":
        return ""
    names = board.entries[0].classes if board.entries else []
    tail = ", ".join(names[c] if c < len(names) else str(c) for c in t.tail_classes)
    what = {"tail20": "the mean robust accuracy of the worst 20% of classes",
            "tail": f"the mean robust accuracy of the tail classes ({tail})"}
    return f"Primary metric: {what[t.primary_metric]}. {t.primary_reason.strip()}".strip()


def leaders(board: TrackBoard, key: str = "worst") -> list[Entry]:
    """The entries in rank group 1 of ``key``."""
    return [r.entry for r in board.ranking.ranked if r.ranks[key] == 1] if board.ranking else []


def leaders_text(board: TrackBoard, key: str, most: int = 4) -> str:
    """Rank group 1 of ``key`` by name (id); only its size when it holds more than ``most`` entries."""
    first = leaders(board, key)
    if not first:
        return "-"
    if len(first) > most:
        return f"{len(first)} of {len(board.entries)} entries tie"
    return ", ".join(f"{e.name} ({e.id})" for e in first)


#: the board's lists of entries with a status, as both pages title them
STATUS_LISTS = (
    ("audited", "Audited (a sample of the evaluation re-run with the checkpoint, `rfbench leaderboard audit`)"),
    ("held", "Not ranked until audited (this track requires a passing audit)"),
    ("unverified", "Unverified on the machine that built this page (ranked on the entry's own evidence)"),
)


def status_items(board: TrackBoard) -> list[tuple[str, list[tuple[str, str]]]]:
    """``(title, [(entry id, reason), ...])`` for each non-empty status list of the board."""
    return [(title, list(getattr(board, key).items())) for key, title in STATUS_LISTS if getattr(board, key)]
