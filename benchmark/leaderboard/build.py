"""``rfbench leaderboard build``: ``leaderboards/README.md``, one page and one heat map per track.

Entries are ranked by the worst-class accuracy under the worst case over the
track's attacks (a sample counts as robust only if every attack failed), on
the track's ranked checkpoint; ties go to the higher mean.  Every entry is
checked first; an entry that fails its check is listed as rejected, never
ranked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rfbench.benchmark.io import atomic_write_text
from rfbench.benchmark.leaderboard.check import check_entry_file
from rfbench.benchmark.leaderboard.schema import Entry, EntryError, Track, list_tracks

log = logging.getLogger(__name__)

HEATMAP = "heatmap.png"


@dataclass
class TrackBoard:
    track: Track
    entries: list[Entry]  # ranked
    rejected: dict[str, str]  # file name -> reason


def collect(track: Track, root: Path) -> TrackBoard:
    entries, rejected = [], {}
    for path in sorted(track.path.parent.glob("*.json")):
        try:
            entries.append(check_entry_file(path, root))
        except EntryError as exc:
            rejected[path.name] = "; ".join(exc.problems)
            log.warning("rejected %s: %s", path, rejected[path.name])
    ck = track.info.protocol.checkpoint

    def rank_key(e: Entry) -> tuple[float, float]:
        s = e.evaluation(ck).summary["worst_case"]
        return (-s["worst"], -s["mean"])

    return TrackBoard(track=track, entries=sorted(entries, key=rank_key), rejected=rejected)


def cost_text(e: Entry) -> str:
    c = e.cost
    if c.gpu_hours is not None:
        return f"{c.gpu_hours:.2f}"
    return f"0 (CPU {(c.train_seconds + c.eval_seconds) / 3600:.2f} h)"


def ranking_frame(board: TrackBoard) -> pd.DataFrame:
    """The ranked table (percentages): worst-class robust, its class, mean robust, clean, gap, last checkpoint, cost."""
    ck = board.track.info.protocol.checkpoint
    rows = []
    for rank, e in enumerate(board.entries, 1):
        ev = e.evaluation(ck)
        wc, clean = ev.summary["worst_case"], ev.summary["clean"]
        last = e.evaluations.get("last") if ck != "last" else None
        row = {
            "rank": rank,
            "entry": f"[{e.id}]({e.id}.json)",
            "defense": e.name,
            "worst-class robust": 100 * wc["worst"],
            "weakest class": e.classes[wc["worst_class"]],
            "mean robust": 100 * wc["mean"],
            "clean": 100 * clean["mean"],
            "gap": 100 * wc["gap"],
        }
        if last is not None:
            row["last: worst / mean"] = (f"{100 * last.summary['worst_case']['worst']:.1f} / "
                                         f"{100 * last.summary['worst_case']['mean']:.1f}")
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
    m = np.array([e.evaluation(ck).per_class["worst_case"] for e in board.entries], dtype=float) * 100
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(classes) + 3), 0.42 * len(board.entries) + 2.0))
    im = ax.imshow(m, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    if len(classes) <= 20:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                dark = m[i, j] < 15 or m[i, j] > 85  # the ends of the colour map are dark
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(board.entries)), [f"{k + 1}. {e.name} ({e.id})" for k, e in enumerate(board.entries)], fontsize=8)
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
    lines += ["", "Ranked by worst-class robust accuracy (worst case over all attacks). Accuracies in percent; "
              "gap = best minus worst class; GPU-h = training + evaluation time on a GPU (0 for CPU runs, their CPU "
              "hours in brackets).", ""]
    if board.entries:
        lines += [ranking_frame(board).to_markdown(index=False, floatfmt=".1f"), "", f"![per-class heat map]({HEATMAP})", ""]
    else:
        lines += ["No entries yet.", ""]
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
            "leader": leader.name if leader else "-",
            "worst-class robust": f"{100 * leader.evaluation(ck).summary['worst_case']['worst']:.1f}" if leader else "-",
            "mean robust": f"{100 * leader.evaluation(ck).summary['worst_case']['mean']:.1f}" if leader else "-",
        })
    return "\n".join([
        "# rfbench leaderboards", "",
        "Adversarially trained models compared on their **weakest class**: each track ranks entries by the "
        "worst-class robust accuracy under the worst case over its attack suite. Each entry is a JSON file "
        "checked by `rfbench leaderboard check` (schema, the track's protocol, summaries recomputed from the "
        "per-class vectors and the per-sample flags). Pages are generated by `rfbench leaderboard build`; "
        "do not edit them by hand. To add a defense, see [SUBMITTING.md](SUBMITTING.md).", "",
        pd.DataFrame(rows).to_markdown(index=False) if rows else "No tracks.", "",
    ])


def build(root: Path) -> list[Path]:
    """Render every track page, heat map and the index; returns the written paths."""
    written = []
    boards = [collect(t, root) for t in list_tracks(root)]
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
