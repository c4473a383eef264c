"""One row model for the leaderboard tables, built once from a board and rendered to Markdown and to HTML.

:func:`track_table` turns a :class:`~rfbench.benchmark.leaderboard.board.TrackBoard`
into a :class:`Table`: its columns (those no entry fills are dropped) and one
:class:`LeaderboardRow` per ranked entry, each cell holding the value a column
sorts by (accuracies as fractions) and its display text.  :func:`index_table`
does the same for the list of tracks.  The Markdown page
(:mod:`~rfbench.benchmark.leaderboard.build`) and the web page
(:mod:`~rfbench.benchmark.leaderboard.html`) render these tables and nothing
else, so the two cannot disagree.

Rows are ordered by rank group of the worst-class robust accuracy, then by the
number shown (worst-class robust accuracy, then worst-20%, then mean robust
accuracy, then the id), so that inside a group the numbers fall monotonically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from rfbench.benchmark.leaderboard.board import cost_text, leaders_text
from rfbench.benchmark.leaderboard.paths import is_url
from rfbench.benchmark.leaderboard.text import MAX_CHARS
from rfbench.core.perclass import pct

if TYPE_CHECKING:
    from rfbench.benchmark.leaderboard.board import TrackBoard
    from rfbench.benchmark.leaderboard.ranking import RankedEntry
    from rfbench.benchmark.leaderboard.schema import Entry

#: the label of standard AutoAttack (Croce & Hein, ICML 2020) in an entry's attacks: RobustBench's headline number
STANDARD_AUTOATTACK = "autoattack-standard"

#: the one-line explanation of a rank group, printed beside every ranked table
RANK_GROUP_LINE = (
    "Rank group = 1 + the number of entries significantly better on that metric (paired per-image test, seed "
    "spread included): entries not significantly different share a group, so one group can span several points "
    "and a noisier entry can sit a group lower than one with a slightly smaller number. Rows: by the group of the "
    "track's primary metric (the worst class unless the page says otherwise), then by its number."
)


@dataclass(frozen=True)
class Column:
    key: str
    label: str  # the HTML heading; the Markdown heading is :attr:`md_label`
    numeric: bool = False
    first: str = "ascending"  # the first sort direction of the column's button
    help: str = ""

    @property
    def md_label(self) -> str:
        """``Mean robust (%)`` -> ``mean robust`` (the Markdown page states once that accuracies are in percent)."""
        text = self.label.removesuffix(" (%)")
        return text[:1].lower() + text[1:] if text.split(" ")[0][1:].islower() else text  # "AutoAttack", "GPU-h" stay


@dataclass(frozen=True)
class Cell:
    sort: Any  # the value the column sorts by: fractions for accuracies, ints for ranks, text otherwise
    text: str  # plain display text (renderers escape it); "-" when absent
    href: str | None = None  # an https URL or a page of the site
    page: str | None = None  # links to the page of this id: each renderer maps it to its own file
    detail: str = ""  # a second, smaller line (a paper's citation)
    interval: tuple[float, float, float] | None = None  # (lo, hi, point) fractions: the web page draws a bar
    title: str = ""  # more about the cell (the images behind an interval, the classes that tie)
    limit: int = MAX_CHARS  # the most characters of ``text`` shown (submitted strings are cut)


@dataclass
class LeaderboardRow:
    """One ranked entry with every column's cell; ``group`` is its rank group on the track's primary metric."""

    entry: "Entry"
    ranked: "RankedEntry"
    cells: dict[str, Cell] = field(default_factory=dict)

    primary: str = "worst"  # the track's primary metric: worst, tail20 or tail

    @property
    def group(self) -> int:
        return self.ranked.ranks[self.primary]


@dataclass
class Table:
    columns: list[Column]
    rows: list[LeaderboardRow]
    caption: str = ""


# -- the cells of one entry ---------------------------------------------------------------------------------------
def _paper_cell(e: "Entry") -> Cell:
    from rfbench.defenses.papers import paper_of

    paper = paper_of(e.defense.name)
    if paper is not None:
        return Cell(paper.title, paper.title, href=paper.url, detail=paper.citation, limit=120)
    text = e.defense.paper or ""
    if not text:
        return Cell("", "-")
    return Cell(text, text, href=text if is_url(text) else None)


def _architecture(e: "Entry") -> str:
    kwargs = (e.train_config or {}).get("model_kwargs") or {}
    if isinstance(kwargs, dict) and kwargs:
        return f"{e.model} ({', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})"
    return e.model


def _extra_data(e: "Entry", dataset: str) -> str:
    """Training data beyond the track's own training set (RobustBench's "extra data")."""
    given = getattr(e, "extra_data", None)
    if given is not None:
        return str(given) if not isinstance(given, bool) else ("yes" if given else "no")
    used = (e.train_config or {}).get("dataset", dataset)
    return "no" if used == dataset else f"yes ({used})"


def _checkpoint_url(e: "Entry") -> str | None:
    """A link to the entry's weights, when the entry records one (``checkpoint`` as a URL or with a ``url``)."""
    ck = getattr(e, "checkpoint", None)
    url = ck if isinstance(ck, str) else (ck.get("url") if isinstance(ck, dict) else getattr(ck, "url", None))
    url = url or (e.provenance or {}).get("checkpoint_url")
    return url if isinstance(url, str) and is_url(url) else None


def _audited(e: "Entry", r: "RankedEntry") -> bool | None:
    value = getattr(r, "audited", None)
    return getattr(e, "audited", None) if value is None else value


def _weakest(e: "Entry", per_class: Sequence[float], k: int) -> Cell:
    acc = np.asarray(per_class, dtype=float)
    tied = [e.classes[j] for j in np.flatnonzero(acc == np.nanmin(acc))] if acc.size else []
    if len(tied) > 1:
        return Cell(e.classes[k], f"{len(tied)} classes tie", title=", ".join(tied))
    return Cell(e.classes[k], e.classes[k])


def entry_facts(e: "Entry", dataset: str) -> dict[str, Cell]:
    """What RobustBench lists about a model: its paper, architecture, extra data and (when recorded) weights."""
    arch, extra = _architecture(e), _extra_data(e, dataset)
    cells = {"paper": _paper_cell(e), "architecture": Cell(arch, arch), "extra_data": Cell(extra, extra)}
    url = _checkpoint_url(e)
    if url:
        cells["checkpoint"] = Cell(url, "weights", href=url)
    return cells


def _row(board: "TrackBoard", r: "RankedEntry") -> LeaderboardRow:
    e = r.entry
    ck = board.track.info.protocol.checkpoint
    ev = e.evaluation(ck)
    wc, clean = ev.summary["worst_case"], ev.summary["clean"]
    cells = {
        **({"rank_tail": Cell(r.ranks["tail"], str(r.ranks["tail"]))} if "tail" in r.ranks else {}),
        "rank_worst": Cell(r.ranks["worst"], str(r.ranks["worst"])),
        "rank_tail20": Cell(r.ranks["tail20"], str(r.ranks["tail20"])),
        "entry": Cell(e.id, e.id, page=e.id),
        "defense": Cell(e.name, e.name),
        **entry_facts(e, board.track.info.protocol.dataset),
        "seed": Cell(e.seed, str(e.seed)),
        "worst": Cell(r.worst, pct(r.worst)),
        "interval": Cell(r.worst_ci[0], f"{pct(r.worst_ci[0])}-{pct(r.worst_ci[1])}",
                         interval=(r.worst_ci[0], r.worst_ci[1], r.worst),
                         title=f"{r.worst_count} of {r.worst_n} images"),
        "weakest": _weakest(e, ev.per_class["worst_case"], r.worst_class),
        "tail20": Cell(r.tail20, pct(r.tail20)),
        **({"tail": Cell(r.tail, pct(r.tail))} if r.tail is not None else {}),
        "mean": Cell(wc["mean"], pct(wc["mean"])),
        "clean": Cell(clean["mean"], pct(clean["mean"])),
        "gap": Cell(wc["gap"], pct(wc["gap"])),
    }
    aa = ev.summary.get(STANDARD_AUTOATTACK)
    if aa is not None:
        cells["autoattack"] = Cell(aa["mean"], pct(aa["mean"]))
    published = e.provenance.get("published_autoattack")  # an external model's RobustBench number (check validates it)
    if isinstance(published, (int, float)) and not isinstance(published, bool):
        cells["published_autoattack"] = Cell(float(published), pct(float(published)))
    last = e.evaluations.get("last") if ck != "last" else None
    if last is not None:
        lw = last.summary["worst_case"]
        cells["last"] = Cell(lw["worst"], f"{pct(lw['worst'])} / {pct(lw['mean'])}")
    c = e.cost
    hours = c.gpu_hours if c.gpu_hours is not None else (c.train_seconds + c.eval_seconds) / 3600
    cells["cost"] = Cell(hours, cost_text(e))
    audited = _audited(e, r)
    if audited is not None:
        cells["audited"] = Cell(int(bool(audited)), "yes" if audited else "no")
    return LeaderboardRow(entry=e, ranked=r, cells=cells, primary=board.track.info.primary_metric)


#: every column of a track's table, in order; optional ones (``optional=True`` below) show only when a row fills them
COLUMNS = (
    (Column("rank_tail", "Rank: tail classes", numeric=True, help="rank group of the tail classes' mean robust "
            "accuracy (the long-tailed track's primary metric)"), True),
    (Column("rank_worst", "Rank: worst class", numeric=True, help="rank group of the worst-class robust accuracy"), False),
    (Column("rank_tail20", "Rank: worst 20%", numeric=True, help="rank group of the worst-20% robust accuracy"), False),
    (Column("entry", "Entry"), False),
    (Column("defense", "Defense"), False),
    (Column("paper", "Paper"), False),
    (Column("architecture", "Architecture"), False),
    (Column("extra_data", "Extra data", help="training data beyond the track's training set"), False),
    (Column("seed", "Seed", numeric=True), False),
    (Column("worst", "Worst-class robust (%)", numeric=True, first="descending"), False),
    (Column("interval", "95% interval (%)", first="descending",
            help="interval of the worst-class accuracy (Bonferroni-adjusted Wilson intervals)"), False),
    (Column("weakest", "Weakest class"), False),
    (Column("tail20", "Worst-20% robust (%)", numeric=True, first="descending"), False),
    (Column("tail", "Tail classes robust (%)", numeric=True, first="descending",
            help="mean robust accuracy of the track's tail classes"), True),
    (Column("mean", "Mean robust (%)", numeric=True, first="descending"), False),
    (Column("autoattack", "AutoAttack (%)", numeric=True, first="descending",
            help="mean robust accuracy under standard AutoAttack alone (RobustBench's number)"), True),
    (Column("published_autoattack", "RobustBench AA (%)", numeric=True, first="descending",
            help="the model's published AutoAttack accuracy on RobustBench's leaderboard, beside the mean robust "
                 "accuracy measured here as a cross-check"), True),
    (Column("clean", "Clean (%)", numeric=True, first="descending"), False),
    (Column("gap", "Gap (%)", numeric=True, help="best minus worst class"), False),
    (Column("last", "Last checkpoint: worst / mean (%)", first="descending"), True),
    (Column("cost", "GPU-h", numeric=True, help="training + evaluation time on a GPU; CPU runs: 0, their CPU hours "
            "in brackets"), False),
    (Column("checkpoint", "Checkpoint"), True),
    (Column("audited", "Audited", first="descending", help="re-executed on a sample of its test images"), True),
)


def order_key(r: "RankedEntry", primary: str = "worst") -> tuple:
    """Rank group of the primary metric and its number, then the numbers shown: worst class, worst 20%, mean
    (descending), then the id."""
    value = {"worst": r.worst, "tail20": r.tail20, "tail": r.tail}[primary]
    return (r.ranks[primary], -(value if value is not None else float("-inf")), -r.worst, -r.tail20, -r.mean,
            r.entry.id)


def track_table(board: "TrackBoard") -> Table:
    """The ranked table of a track: columns no row fills are dropped."""
    primary = board.track.info.primary_metric
    ranked = sorted(board.ranking.ranked, key=lambda r: order_key(r, primary)) if board.ranking else []
    rows = [_row(board, r) for r in ranked]
    columns = [c for c, optional in COLUMNS if not optional or any(c.key in row.cells for row in rows)]
    ck = board.track.info.protocol.checkpoint
    return Table(columns=columns, rows=rows, caption=f"Ranked entries of {board.track.info.title} (the {ck} checkpoint)")


def ordered_entries(board: "TrackBoard") -> list["Entry"]:
    """The ranked entries in table order."""
    return [row.entry for row in track_table(board).rows]


# -- the index ----------------------------------------------------------------------------------------------------
INDEX_COLUMNS = [
    Column("track", "Track"), Column("setting", "Setting"), Column("hardware", "Hardware"),
    Column("entries", "Entries", numeric=True, first="descending"),
    Column("leaders_worst", "Rank 1 (worst class)"), Column("leaders_tail20", "Rank 1 (worst 20%)"),
    Column("top_worst", "Top worst-class robust (%)", numeric=True, first="descending"),
    Column("top_mean", "Its mean robust (%)", numeric=True, first="descending"),
]


@dataclass
class IndexRow:
    track: str
    cells: dict[str, Cell]


def index_table(boards: Sequence["TrackBoard"]) -> tuple[list[Column], list[IndexRow]]:
    """One row per track: its size, its rank-1 entries, and the first row's worst-class and mean robust accuracy."""
    out = []
    for b in boards:
        t = b.track.info
        rows = track_table(b).rows
        top = rows[0].ranked if rows else None
        cells = {
            "track": Cell(t.id, t.id, page=t.id),
            "setting": Cell(t.title, t.title),
            "hardware": Cell(t.hardware, t.hardware.upper()),
            "entries": Cell(len(rows), str(len(rows))),
            "leaders_worst": Cell(leaders_text(b, "worst"), leaders_text(b, "worst")),
            "leaders_tail20": Cell(leaders_text(b, "tail20"), leaders_text(b, "tail20")),
            "top_worst": Cell(top.worst, pct(top.worst)) if top else Cell(-1, "-"),
            "top_mean": Cell(top.mean, pct(top.mean)) if top else Cell(-1, "-"),
        }
        out.append(IndexRow(track=t.id, cells=cells))
    return INDEX_COLUMNS, out
