"""``rfbench leaderboard build``: ``leaderboards/README.md``, one page and one heat map per track.

Entries are ranked into rank groups by the worst-class accuracy and by the
mean of the worst 20% of classes, under the worst case over the track's
attacks (a sample counts as robust only if every attack failed), on the
track's ranked checkpoint; entries that are not significantly different share
a rank group (:mod:`rfbench.benchmark.leaderboard.ranking`, whose ``RULE`` is
printed on every page).  Every entry is checked first; an entry that fails its
check is listed as rejected, never ranked; an entry identical to another is
listed as such, never ranked.  ``--html DIR`` also writes the static web
leaderboard (:mod:`rfbench.benchmark.leaderboard.html`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from rfbench.benchmark.leaderboard.board import TrackBoard, collect, cost_text, leaders_text, noise_text, primary_text
from rfbench.benchmark.leaderboard.ranking import RULE
from rfbench.benchmark.leaderboard.schema import list_tracks
from rfbench.core.io import atomic_write_text
from rfbench.core.perclass import pct, to_percent

log = logging.getLogger(__name__)

HEATMAP = "heatmap.png"


def ranking_frame(board: TrackBoard) -> pd.DataFrame:
    """The ranked table (percentages): rank groups, worst-class robust with its Wilson interval and class,
    worst-20% robust, mean robust, clean, gap, last checkpoint, cost."""
    ck = board.track.info.protocol.checkpoint
    rows = []
    for r in board.ranking.ranked if board.ranking else []:
        e = r.entry
        ev = e.evaluation(ck)
        wc, clean = ev.summary["worst_case"], ev.summary["clean"]
        last = e.evaluations.get("last") if ck != "last" else None
        row = {"rank: tail": r.ranks["tail"]} if "tail" in r.ranks else {}
        row |= {
            "rank: worst": r.ranks["worst"],
            "rank: worst 20%": r.ranks["tail20"],
            "entry": f"[{e.id}]({e.id}.json)",
            "defense": e.name,
            "worst-class robust": pct(r.worst),
            "95% interval": f"{pct(r.worst_ci[0])}-{pct(r.worst_ci[1])}",
            "weakest class": e.classes[r.worst_class],
            "worst-20% robust": pct(r.tail20),
            **({"tail-classes robust": pct(r.tail)} if r.tail is not None else {}),
            "mean robust": pct(wc["mean"]),
            "clean": pct(clean["mean"]),
            "gap": pct(wc["gap"]),
        }
        if last is not None:
            row["last: worst / mean"] = (f"{pct(last.summary['worst_case']['worst'])} / "
                                         f"{pct(last.summary['worst_case']['mean'])}")
        row["GPU-h"] = cost_text(e)
        row["seed"] = e.seed
        rows.append(row)
    return pd.DataFrame(rows)


def plot_heatmap(board: TrackBoard, path: Path) -> Path:
    """Per-class worst-case robust accuracy of every entry (rows ranked), annotated in percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rfbench.benchmark.eval.plots import save_figure

    ck = board.track.info.protocol.checkpoint
    classes = board.entries[0].classes
    frac = np.array([e.evaluation(ck).per_class["worst_case"] for e in board.entries], dtype=float)
    m = to_percent(frac)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(classes) + 3), 0.42 * len(board.entries) + 2.0))
    im = ax.imshow(m, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    if len(classes) <= 20:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                dark = m[i, j] < 15 or m[i, j] > 85  # the ends of the colour map are dark
                ax.text(j, i, pct(frac[i, j], 0), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right", fontsize=8)
    first = board.track.info.primary_metric
    ranks = [r.ranks[first] for r in board.ranking.ranked] if board.ranking else range(1, len(board.entries) + 1)
    ax.set_yticks(range(len(board.entries)), [f"{k}. {e.name} ({e.id})" for k, e in zip(ranks, board.entries)], fontsize=8)
    ax.set_title(f"{board.track.info.title}\nper-class robust accuracy (%, worst case over the track's attacks, "
                 f"{ck} checkpoint)", fontsize=9)
    fig.colorbar(im, ax=ax, label="robust accuracy (%)")
    return save_figure(fig, path, dpi=120)


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
        lines += ["", primary_text(board) + " The table sorts by its rank group first."]
    lines += ["", "Ranked by rank group of the worst-class robust accuracy, then of the worst-20% robust accuracy "
              "(worst case over all attacks). Accuracies in percent; 95% interval = interval of the worst-class "
              "accuracy (Bonferroni-adjusted Wilson intervals, see the rule below); gap = best minus worst class; GPU-h = training + evaluation time on a GPU (0 for CPU runs, "
              "their CPU hours in brackets).", "", RULE, ""]
    if board.entries:
        lines += [noise_text(board), "", ranking_frame(board).to_markdown(index=False, floatfmt=".1f"), "",
                  f"![per-class heat map]({HEATMAP})", ""]
    else:
        lines += ["No entries yet.", ""]
    if board.ranking and board.ranking.identical:
        lines += ["Not ranked, identical to another entry (the same per-sample predictions on the ranked checkpoint):", ""]
        lines += [f"- [{r.entry.id}]({r.entry.id}.json) ({r.entry.name}): identical to {r.identical_to}"
                  for r in board.ranking.identical] + [""]
    for title, items in (("Audited (a sample of the evaluation re-run with the checkpoint, "
                          "`rfbench leaderboard audit`):", board.audited),
                         ("Not ranked until audited:", board.held),
                         ("Unverified on the machine that built this page:", board.unverified)):
        if items:
            lines += [title, ""] + [f"- `{eid}`: {why}" for eid, why in items.items()] + [""]
    if board.rejected:
        lines += ["Rejected entries (failed `rfbench leaderboard check`):", ""]
        lines += [f"- `{name}`: {why}" for name, why in board.rejected.items()] + [""]
    return "\n".join(lines)


def index_page(boards: list[TrackBoard]) -> str:
    rows = []
    for b in boards:
        t = b.track.info
        leader = b.entries[0] if b.entries else None
        ck = t.protocol.checkpoint
        rows.append({
            "track": f"[{t.id}]({t.id}/README.md)",
            "setting": t.title,
            "hardware": t.hardware.upper(),
            "entries": len(b.entries),
            "rank 1 (worst class)": leaders_text(b, "worst"),
            "rank 1 (worst 20%)": leaders_text(b, "tail20"),
            "top worst-class robust": pct(leader.evaluation(ck).summary["worst_case"]["worst"]) if leader else "-",
            "its mean robust": pct(leader.evaluation(ck).summary["worst_case"]["mean"]) if leader else "-",
        })
    return "\n".join([
        "# rfbench leaderboards", "",
        "Adversarially trained models compared on their **weakest class**: each track ranks entries by the "
        "worst-class robust accuracy under the worst case over its attack suite, and by the mean of its worst 20% "
        "of classes, in rank groups: entries that are not significantly different share a rank. Each entry is a JSON file "
        "checked by `rfbench leaderboard check` (schema, the track's protocol, summaries recomputed from the "
        "per-class vectors and the per-sample flags). Pages are generated by `rfbench leaderboard build`; "
        "do not edit them by hand. To add a defense, see [SUBMITTING.md](SUBMITTING.md). "
        "`rfbench leaderboard build --html DIR` writes the same boards as a static web site.", "",
        pd.DataFrame(rows).to_markdown(index=False) if rows else "No tracks.", "",
        "## How entries are ranked", "", RULE, "",
    ])


def build(root: Path, html: Path | None = None) -> list[Path]:
    """Render every track page, heat map and the index (and the web site into ``html``); returns the written paths."""
    written = []
    boards = [collect(t, root) for t in list_tracks(root)]
    if html is not None:
        from rfbench.benchmark.leaderboard.html import write_site

        written += write_site(boards, Path(html))
    for b in boards:
        d = b.track.path.parent
        if b.entries:
            written.append(plot_heatmap(b, d / HEATMAP))
        else:
            (d / HEATMAP).unlink(missing_ok=True)
        atomic_write_text(d / "README.md", track_page(b))
        written.append(d / "README.md")
    atomic_write_text(root / "leaderboards" / "README.md", index_page(boards))
    written.append(root / "leaderboards" / "README.md")
    return written
