"""``rfbench leaderboard build``: ``leaderboards/README.md``, one page and one heat map per track.

Entries are ranked into rank groups by the worst-class accuracy and by the
mean of the worst 20% of classes, under the worst case over the track's
attacks (a sample counts as robust only if every attack failed), on the
track's ranked checkpoint; entries that are not significantly different share
a rank group (:mod:`rfbench.benchmark.leaderboard.ranking`, whose ``RULE`` is
printed on every page).  Every entry is checked first; an entry that fails its
check is listed as rejected, never ranked; an entry identical to another is
listed as such, never ranked.  The tables are the row model of
:mod:`rfbench.benchmark.leaderboard.rows` (rows by rank group, then by the number
shown), every submitted string escaped by :mod:`rfbench.benchmark.leaderboard.text`.
``--html DIR`` also writes the static web leaderboard (:mod:`rfbench.benchmark.leaderboard.html`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import quote

from tabulate import tabulate

from rfbench.benchmark.leaderboard.board import TrackBoard, collect, noise_text, primary_text, status_items
from rfbench.benchmark.leaderboard.ranking import RULE
from rfbench.benchmark.leaderboard.rows import RANK_GROUP_LINE, Cell, Column, index_table, track_table
from rfbench.benchmark.leaderboard.schema import list_tracks
from rfbench.benchmark.leaderboard.text import CLASS_CHARS, md_code, md_text, one_line
from rfbench.core.io import atomic_write_text
from rfbench.core.perclass import pct, to_percent

log = logging.getLogger(__name__)

HEATMAP = "heatmap.png"


def md_cell(cell: Cell, page: Callable[[str], str]) -> str:
    """One cell as Markdown: escaped text, a link when the cell has one (its target quoted, never markup)."""
    text = md_text(cell.text, cell.limit)
    target = page(cell.page) if cell.page is not None else cell.href
    if target:
        text = f"[{text}]({quote(target, safe=':/?=&#%.-_~+')})"
    if cell.detail:
        text += f" ({md_text(cell.detail)})"
    return text


def md_table(columns: Sequence[Column], rows: Sequence[dict[str, Cell]], page: Callable[[str], str]) -> str:
    """A pipe table of the row model (numeric columns right-aligned)."""
    body = [[md_cell(r[c.key], page) if c.key in r else "-" for c in columns] for r in rows]
    return tabulate(body, headers=[c.md_label for c in columns], tablefmt="pipe", disable_numparse=True,
                    colalign=["right" if c.numeric else "left" for c in columns])


def ranking_markdown(board: TrackBoard) -> str:
    """The ranked table of a track in Markdown (percentages), from :func:`track_table`."""
    table = track_table(board)
    return md_table(table.columns, [r.cells for r in table.rows], lambda eid: f"{eid}.json")


def plot_heatmap(board: TrackBoard, path: Path) -> Path:
    """Per-class worst-case robust accuracy of every entry (rows ranked), annotated in percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rfbench.benchmark.eval.plots import save_figure

    ck = board.track.info.protocol.checkpoint
    table = track_table(board)
    entries = [row.entry for row in table.rows]
    classes = [one_line(c, CLASS_CHARS) for c in entries[0].classes]
    frac = np.array([e.evaluation(ck).per_class["worst_case"] for e in entries], dtype=float)
    m = to_percent(frac)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(classes) + 3), 0.42 * len(entries) + 2.0))
    im = ax.imshow(m, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    if len(classes) <= 20:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                dark = m[i, j] < 15 or m[i, j] > 85  # the ends of the colour map are dark
                ax.text(j, i, pct(frac[i, j], 0), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    # submitted names are text, never mathtext: parse_math=False on every label that holds one
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right", fontsize=8, parse_math=False)
    ax.set_yticks(range(len(entries)), [one_line(f"{row.group}. {row.entry.name} ({row.entry.id})") for row in table.rows],
                  fontsize=8, parse_math=False)
    ax.set_title(f"{one_line(board.track.info.title, None)}\nper-class robust accuracy (%, worst case over the track's "
                 f"attacks, {ck} checkpoint)", fontsize=9, parse_math=False)
    fig.colorbar(im, ax=ax, label="robust accuracy (%)")
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)  # a build in a long-lived process (tests, the API) keeps no figure open


def track_page(board: TrackBoard) -> str:
    t, p = board.track.info, board.track.info.protocol
    run = board.track.run
    budget = ", ".join(f"{k} {run.train[k]}" for k in ("epochs", "max_train_samples", "batch_size", "optimizer", "lr")
                       if k in run.train)
    lines = [
        f"# {t.title}", "",
        t.description.strip(), "",
        f"- **Protocol:** {p.dataset}, {p.model}, {p.norm} eps = {p.eps:g}; attacks: {', '.join(p.attacks)}; "
        f"{p.n_per_class or 'all'} test images per class ({p.test_size} in all); ranked on the `{p.checkpoint}` checkpoint "
        "(selected on a validation split, never on the test set).",
        f"- **Training budget:** {budget}; fixed for every entry: {', '.join(t.fixed_train)}.",
        f"- **Run it:** `rfbench run leaderboards/{t.id}/track.yaml --defense NAME`, then "
        f"`rfbench leaderboard submit runs/{t.id}/NAME-s0 --track {t.id}` (see [SUBMITTING.md](../SUBMITTING.md)).",
    ]
    if t.reference:
        lines.append(f"- **Published numbers for this setting:** {t.reference}")
    if primary_text(board):
        lines += ["", md_text(primary_text(board), None) + " The table sorts by its rank group first."]
    lines += ["", "Ranked by rank group of the primary metric (the worst-class robust accuracy unless said above), "
              "then by its value (worst case over all attacks). Accuracies in percent; 95% interval = interval of the worst-class "
              "accuracy (simultaneous: Bonferroni-adjusted Wilson intervals, see the rule below); gap = best minus worst "
              "class; paper, architecture and extra data (training data beyond the track's own training set) as "
              "RobustBench lists them; GPU-h = wall-clock hours of training + evaluation on a GPU (0 for CPU runs, "
              "their wall-clock hours in brackets).",
              "", RULE, ""]
    if board.entries:
        lines += [noise_text(board), "", f"**Rank groups:** {RANK_GROUP_LINE}", "", ranking_markdown(board), "",
                  f"![per-class heat map]({HEATMAP})", ""]
    else:
        lines += ["No entries yet.", ""]
    if board.ranking and board.ranking.identical:
        lines += ["Not ranked, identical to another entry (the same per-sample predictions on the ranked checkpoint):", ""]
        lines += [f"- [{md_text(r.entry.id)}]({quote(r.entry.id)}.json) ({md_text(r.entry.name)}): identical to "
                  f"{md_text(r.identical_to)}" for r in board.ranking.identical] + [""]
    for title, items in status_items(board):
        lines += [title + ":", ""] + [f"- {md_code(name)}: {md_text(why, None)}" for name, why in items] + [""]
    if board.rejected:
        lines += ["Rejected entries (failed `rfbench leaderboard check`):", ""]
        lines += [f"- {md_code(name)}: {md_text(why, None)}" for name, why in board.rejected.items()] + [""]
    return "\n".join(lines)


def index_page(boards: list[TrackBoard]) -> str:
    columns, rows = index_table(boards)
    return "\n".join([
        "# rfbench leaderboards", "",
        "Adversarially trained models compared on their **weakest class**: each track ranks entries by the "
        "worst-class robust accuracy under the worst case over its attack suite, and by the mean of its worst 20% "
        "of classes, in rank groups: entries that are not significantly different share a rank. Each entry is a JSON file "
        "checked by `rfbench leaderboard check` (schema, the track's protocol, summaries recomputed from the "
        "per-class vectors and the per-sample flags). Pages are generated by `rfbench leaderboard build`; "
        "do not edit them by hand. To add a defense, see [SUBMITTING.md](SUBMITTING.md). "
        "`rfbench leaderboard build --html DIR` writes the same boards as a static web site.", "",
        md_table(columns, [r.cells for r in rows], lambda tid: f"{tid}/README.md") if rows else "No tracks.", "",
        "## How entries are ranked", "", RANK_GROUP_LINE, "", RULE, "",
    ])


def build(root: Path, html: Path | None = None) -> list[Path]:
    """Render every track page, heat map and the index (and the web site into ``html``); returns the written paths.

    The pages are replaced as one group (:mod:`rfbench.benchmark.leaderboard.pagegroup`): a kill
    at any point leaves the old pages or, once the next build has finished the swap, the new
    ones, and what a killed build left behind is removed by the next one.
    """
    from rfbench.benchmark.leaderboard.pagegroup import PageGroup

    boards_dir = root / "leaderboards"
    group = PageGroup(boards_dir, html)
    try:
        written = []
        boards = [collect(t, root) for t in list_tracks(root)]
        if html is not None:
            from rfbench.benchmark.leaderboard.html import write_site

            written += write_site(boards, Path(html), stage=group.stage)
        for b in boards:
            d = b.track.path.parent
            if b.entries:
                plot_heatmap(b, group.stage(d / HEATMAP))
                written.append(d / HEATMAP)
            else:
                group.remove(d / HEATMAP)
            atomic_write_text(group.stage(d / "README.md"), track_page(b))
            written.append(d / "README.md")
        atomic_write_text(group.stage(boards_dir / "README.md"), index_page(boards))
        written.append(boards_dir / "README.md")
    except BaseException:
        group.discard()
        raise
    group.commit()
    return written
