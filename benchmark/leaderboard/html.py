"""``rfbench leaderboard build --html DIR``: the leaderboards as a static web site.

``DIR/index.html`` lists the tracks with their numbers; ``DIR/<track>/index.html`` is a track's
ranked table (the row model of :mod:`~rfbench.benchmark.leaderboard.rows`, rendered by the
autoescaping Jinja2 template ``web/table.html.j2``: rank groups, the worst-class interval, paper,
architecture and extra data, a sort button on every column and a search box), its per-class heat map and its unranked (identical) and rejected
entries; ``DIR/<track>/<entry>.html`` shows one entry (per-class accuracies of
every attack on every checkpoint, with intervals), next to a copy of the
entry's JSON.

The pages are plain HTML with the CSS and a little JavaScript inlined from
``web/`` (nothing is fetched: no CDN, fonts or scripts; a Content-Security-Policy
forbids any other origin and allows only the inlined script and style by
their hashes).  Tables are semantic (``<caption>``, ``<th scope>``); sortable
columns get keyboard-usable buttons and ``aria-sort``; heat-map cells carry
their number, with a text colour chosen for contrast.  Every string taken from
an entry is HTML-escaped: entries are untrusted data.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
from markupsafe import Markup

from rfbench.benchmark.leaderboard.board import noise_text, primary_text, status_items
from rfbench.benchmark.leaderboard.paths import is_url
from rfbench.benchmark.leaderboard.ranking import RULE, RankedEntry
from rfbench.benchmark.leaderboard.rows import (
    RANK_GROUP_LINE,
    Cell,
    Column,
    entry_facts,
    index_table,
    ordered_entries,
    track_table,
)
from rfbench.benchmark.leaderboard.text import CLASS_CHARS, MAX_CHARS, NAME_CHARS, one_line
from rfbench.core.errors import RfbenchError
from rfbench.core.io import atomic_write_bytes, atomic_write_text
from rfbench.core.perclass import pct as _pct
from rfbench.core.perclass import wilson_interval

if TYPE_CHECKING:
    import jinja2

    from rfbench.benchmark.leaderboard.board import TrackBoard
    from rfbench.benchmark.leaderboard.schema import Entry

WEB = Path(__file__).with_name("web")
#: colour stops of the heat map (viridis, Matplotlib's perceptually uniform map), from 0% to 100%
STOPS = ((0.267, 0.005, 0.329), (0.231, 0.322, 0.545), (0.129, 0.569, 0.549), (0.369, 0.788, 0.384),
         (0.993, 0.906, 0.144))
BINS = 20  # heat-map colour classes h0 .. h20 (5 points each)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


# -- colours ------------------------------------------------------------------------------------------------------
def _rgb(t: float) -> tuple[float, float, float]:
    t = min(1.0, max(0.0, t)) * (len(STOPS) - 1)
    i = min(int(t), len(STOPS) - 2)
    f = t - i
    return tuple(a + (b - a) * f for a, b in zip(STOPS[i], STOPS[i + 1]))  # type: ignore[return-value]


def _luminance(rgb: Sequence[float]) -> float:
    """Relative luminance (WCAG 2.x)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(l1: float, l2: float) -> float:
    """WCAG contrast ratio of two relative luminances."""
    hi, lo = max(l1, l2), min(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


def heat_classes() -> str:
    """CSS for the heat-map classes: background from the colour map, black or white text, whichever contrasts more."""
    rules = []
    for b in range(BINS + 1):
        rgb = _rgb(b / BINS)
        lum = _luminance(rgb)
        fg = "#000" if contrast(lum, 0.0) >= contrast(lum, 1.0) else "#fff"
        hexbg = "#" + "".join(f"{round(255 * c):02x}" for c in rgb)
        rules.append(f".h{b} {{ background: {hexbg}; color: {fg}; }}")
    return "\n".join(rules)


def heat_class(x: float) -> str:
    return f"h{int(round(min(1.0, max(0.0, x)) * BINS))}"


# -- page frame ---------------------------------------------------------------------------------------------------
def _assets() -> tuple[str, str]:
    css = (WEB / "style.css").read_text(encoding="utf-8") + "\n" + heat_classes() + "\n"
    js = (WEB / "sort.js").read_text(encoding="utf-8")
    return css, js


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def page(title: str, body: str, crumbs: Sequence[tuple[str, str | None]] = ()) -> str:
    """A complete HTML document with the inlined style and script and a CSP allowing nothing else."""
    css, js = _assets()
    csp = (f"default-src 'none'; style-src {_hash(css)}; script-src {_hash(js)}; img-src 'self' data:; "
           "base-uri 'none'; form-action 'none'")
    nav = ""
    if crumbs:
        parts = [f'<a href="{_esc(href)}">{_esc(text)}</a>' if href else f'<span aria-current="page">{_esc(text)}</span>'
                 for text, href in crumbs]
        nav = f'<nav class="crumbs" aria-label="Breadcrumb">{" / ".join(parts)}</nav>\n'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n<link rel="icon" href="data:,">\n'
        f"<title>{_esc(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n"
        f"{nav}<main>\n{body}\n</main>\n"
        '<footer><p class="note">Generated by <code>rfbench leaderboard build --html</code> from the checked entries; '
        "do not edit by hand.</p></footer>\n"
        f"<script>{js}</script>\n</body>\n</html>\n"
    )


# -- pieces -------------------------------------------------------------------------------------------------------
def ci_svg(lo: float, hi: float, point: float, width: int = 80) -> str:
    """A small interval bar (0-100% axis), hidden from screen readers (the numbers are in the text)."""
    x = lambda v: round(1 + v * (width - 2), 1)  # noqa: E731
    return (f'<svg class="ci" width="{width}" height="12" viewBox="0 0 {width} 12" aria-hidden="true" focusable="false">'
            f'<line x1="1" y1="6" x2="{width - 1}" y2="6" stroke="#c8c8c8" stroke-width="1"/>'
            f'<rect x="{x(lo)}" y="3" width="{max(1.0, x(hi) - x(lo)):.1f}" height="6" fill="#8fb3d9"/>'
            f'<rect x="{x(point) - 1:.1f}" y="1" width="2" height="10" fill="#0b3d6e"/></svg>')


def _th(label: str, *, sort: str | None = None, num: bool = False, aria_sort: str | None = None,
        scope: str = "col") -> str:
    attrs = [f'scope="{scope}"']
    if num:
        attrs.append('class="num"')
    if sort:
        attrs.append(f'data-sortable="{sort}"')
        attrs.append(f'aria-sort="{aria_sort or "none"}"')
    return f"<th {' '.join(attrs)}>{label}</th>"


def _td(text: str, sort: object = None, *, num: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in ("num" if num else "", cls) if c)
    attrs = (f' class="{classes}"' if classes else "") + (f' data-sort="{_esc(sort)}"' if sort is not None else "")
    return f"<td{attrs}>{text}</td>"


def _cost(e: "Entry") -> tuple[str, float]:
    c = e.cost
    if c.gpu_hours is not None:
        return f"{c.gpu_hours:.2f} GPU-h", c.gpu_hours
    hours = (c.train_seconds + c.eval_seconds) / 3600
    return f"{hours:.2f} h wall-clock (CPU)", hours


def entry_file(e: "Entry") -> str:
    return f"{e.id}.html"


@functools.lru_cache(maxsize=1)
def _templates() -> "jinja2.Environment":
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(WEB)), autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=False, lstrip_blocks=False)
    env.filters["cut"] = lambda text, limit=MAX_CHARS: one_line(text, limit)
    env.filters["sortkey"] = lambda v: one_line(v, NAME_CHARS) if isinstance(v, str) else v
    env.globals["ci_svg"] = lambda lo, hi, point: Markup(ci_svg(lo, hi, point))
    return env


def render_table(table_id: str, columns: Sequence[Column], rows: Sequence[dict[str, Cell]], *, caption: str,
                 what: str, hint: str, page: Callable[[str], str], row_head: str, badges: Sequence[str] = (),
                 bands: Sequence[int] = (), sorted_first: bool = True) -> str:
    """A sortable, searchable table of the row model (``web/table.html.j2``, autoescaped)."""
    return _templates().get_template("table.html.j2").render(
        id=table_id, columns=columns, rows=rows, caption=caption, what=what, hint=hint, page=page, row_head=row_head,
        badges=set(badges), bands=list(bands), sorted_first=sorted_first)


def ranking_table(board: "TrackBoard") -> str:
    """The ranked table of a track (the row model of :func:`~rfbench.benchmark.leaderboard.rows.track_table`)."""
    table = track_table(board)
    bands, prev, band = [], None, 1
    for row in table.rows:  # alternate the background per rank group
        if row.group != prev:
            band, prev = 1 - band, row.group
        bands.append(band)
    return render_table(f"rank-{board.track.id}", table.columns, [r.cells for r in table.rows],
                        caption=table.caption, what="entries", hint="defense, paper, class, ...",
                        page=lambda eid: f"{eid}.html", row_head="entry",
                        badges=("rank_worst", "rank_tail20"), bands=bands)


def heat_table(rows: Iterable[tuple[str, str, Sequence[float]]], classes: Sequence[str], caption: str,
               row_head: str = "Entry") -> str:
    """Per-class accuracies as a table of coloured cells; ``rows`` are (label HTML, sort key, values)."""
    head = _th(row_head) + "".join(_th(_esc(one_line(c, CLASS_CHARS)), num=True) for c in classes)
    body = []
    for label, _, values in rows:
        cells = "".join(
            f'<td class="{heat_class(v)}">{_pct(v, 0)}</td>' if not np.isnan(v) else "<td>-</td>" for v in values)
        body.append(f'<tr><th scope="row">{label}</th>{cells}</tr>')
    legend = " ".join(f'<span class="{heat_class(v / 100)}">{v}</span>' for v in range(0, 101, 20))
    return (f'<div class="scroll"><table class="heat">\n<caption>{_esc(caption)}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table></div>\n"
            f'<p class="legend note" aria-hidden="true">Colour scale (%): {legend}</p>\n')


def protocol_list(board: "TrackBoard") -> str:
    t, p = board.track.info, board.track.info.protocol
    items = [
        f"<li><strong>Protocol:</strong> {_esc(p.dataset)}, {_esc(p.model)}, {_esc(p.norm)} eps = {p.eps:g}; attacks: "
        f"{_esc(', '.join(p.attacks))}; {_esc(p.n_per_class or 'all')} test images per class ({_esc(p.test_size)} in "
        f"all); ranked on the <code>{_esc(p.checkpoint)}</code> checkpoint (selected on a validation split).</li>",
        f"<li><strong>Fixed for every entry:</strong> {_esc(', '.join(t.fixed_train))}.</li>",
        f"<li><strong>Run it:</strong> <code>rfbench run leaderboards/{_esc(t.id)}/track.yaml --defense NAME</code>, "
        f"then <code>rfbench leaderboard submit runs/{_esc(t.id)}/NAME-s0 --track {_esc(t.id)}</code>.</li>",
    ]
    if t.reference:
        items.append(f"<li><strong>Published numbers for this setting:</strong> {_esc(t.reference)}</li>")
    return "<ul>\n" + "\n".join(items) + "\n</ul>\n"


def track_html(board: "TrackBoard") -> str:
    t = board.track.info
    ck = t.protocol.checkpoint
    parts = [f"<h1>{_esc(t.title)}</h1>", f"<p>{_esc(t.description.strip())}</p>", protocol_list(board),
             f'<p class="rule">{_esc(RULE)}</p>']
    if board.ranking and board.entries:
        parts += [f'<p class="note">{_esc(noise_text(board))}</p>', "<h2>Ranking</h2>",
                  *([f'<p class="note"><strong>{_esc(primary_text(board))}</strong></p>'] if primary_text(board) else []),
                  f'<p class="note"><strong>Rank groups:</strong> {_esc(RANK_GROUP_LINE)}</p>', ranking_table(board),
                  "<h2>Per-class robust accuracy</h2>",
                  heat_table([(f'<a href="{_esc(entry_file(e))}">{_esc(e.id)}</a>', e.id,
                               e.evaluation(ck).per_class["worst_case"]) for e in ordered_entries(board)],
                             board.entries[0].classes,
                             f"Worst-case robust accuracy per class (%), entries in ranked order, {ck} checkpoint")]
    else:
        parts.append("<p>No entries yet.</p>")
    if board.ranking and board.ranking.identical:
        items = "".join(f'<li><a href="{_esc(entry_file(r.entry))}">{_esc(r.entry.id)}</a> ({_esc(one_line(r.entry.name))}): '
                        f"identical to {_esc(r.identical_to)}</li>" for r in board.ranking.identical)
        parts += ["<h2>Not ranked: identical to another entry</h2>",
                  "<p>These entries have the same per-sample predictions on the ranked checkpoint as the entry "
                  f"named: one result counted twice.</p><ul>{items}</ul>"]
    for title, listed in status_items(board):
        items = "".join(f"<li><code>{_esc(one_line(name))}</code>: {_esc(one_line(why, None))}</li>"
                        for name, why in listed)
        parts += [f"<h2>{_esc(title)}</h2>", f"<ul>{items}</ul>"]
    if board.rejected:
        items = "".join(f"<li><code>{_esc(one_line(name))}</code>: {_esc(one_line(why, None))}</li>"
                        for name, why in board.rejected.items())
        parts += ["<h2>Rejected entries</h2>", f"<p>They failed <code>rfbench leaderboard check</code>.</p><ul>{items}</ul>"]
    return page(t.title, "\n".join(parts), crumbs=[("Leaderboards", "../index.html"), (t.id, None)])


def entry_html(board: "TrackBoard", row: RankedEntry) -> str:
    e = row.entry
    t = board.track.info
    if row.identical_to:
        standing = f"Not ranked: identical to <a href=\"{_esc(row.identical_to)}.html\">{_esc(row.identical_to)}</a>."
    else:
        standing = (f"Rank group {row.ranks['worst']} by the worst class, {row.ranks['tail20']} by the worst 20% of "
                    "classes.")
    code = (f'<a href="{_esc(e.defense.code)}" rel="noopener noreferrer">{_esc(e.defense.code)}</a>'
            if is_url(e.defense.code) else f"<code>{_esc(e.defense.code)}</code>")
    cost_text, _ = _cost(e)
    facts = entry_facts(e, t.protocol.dataset)
    paper = facts["paper"]
    paper_html = _esc(one_line(paper.text, NAME_CHARS))
    if paper.href:
        paper_html = f'<a href="{_esc(paper.href)}" rel="noopener noreferrer">{paper_html}</a>'
    if paper.detail:
        paper_html += f" ({_esc(paper.detail)})"
    weights = facts.get("checkpoint")
    meta = [("Defense", _esc(one_line(e.defense.name, NAME_CHARS))), ("Paper", paper_html),
            ("Architecture", _esc(one_line(facts["architecture"].text, NAME_CHARS))),
            ("Extra data", _esc(facts["extra_data"].text)),
            ("Checkpoint", f'<a href="{_esc(weights.href)}" rel="noopener noreferrer">{_esc(weights.href)}</a>'
             if weights and weights.href else "not published"),
            ("Code", code),
            ("Defense arguments", f"<code>{_esc(json.dumps(e.defense.args, sort_keys=True))}</code>"),
            ("Seed", _esc(e.seed)), ("Standing", standing), ("Cost", _esc(f"{cost_text} on {e.cost.device}")),
            ("Submitted", _esc(e.submitted or "-")),
            ("Command", f"<code>{_esc(e.provenance.get('command', '-'))}</code>"),
            ("Data", f'<a href="{_esc(e.id)}.json">{_esc(e.id)}.json</a> (the entry as committed)')]
    parts = [f"<h1>{_esc(one_line(e.name, NAME_CHARS))} <small>({_esc(e.id)})</small></h1>",
             '<dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta) + "</dl>"]
    for which, ev in e.evaluations.items():
        names = ["clean", *ev.attacks, "worst_case"]
        parts.append(f"<h2>The {_esc(which)} checkpoint"
                     + (f" (epoch {_esc(ev.epoch)})" if ev.epoch is not None else "") + "</h2>")
        parts.append(heat_table([(_esc(n.replace("_", " ")), n, ev.per_class[n]) for n in names], e.classes,
                                f"Per-class accuracy (%) of {e.id}, {which} checkpoint: clean, each attack, and the "
                                "worst case over the attacks", row_head="Accuracy"))
        wc = np.asarray(ev.per_class["worst_case"], dtype=float)
        rows = []
        for k, c in enumerate(e.classes):
            n = ev.n_per_class[k]
            if n == 0:  # a class without test images: NaN accuracy, no interval
                rows.append(f'<tr><th scope="row" data-sort="{_esc(c)}">{_esc(c)}</th>'
                            + _td("-", -1, num=True) + _td("0 / 0", 0, num=True) + _td("-", -1) + "</tr>")
                continue
            count = int(round(wc[k] * n))
            lo, hi = wilson_interval(count, n)
            rows.append(f'<tr><th scope="row" data-sort="{_esc(c)}">{_esc(c)}</th>'
                        + _td(_pct(wc[k]), wc[k], num=True) + _td(f"{count} / {n}", count, num=True)
                        + _td(ci_svg(lo, hi, wc[k]) + f"{_pct(lo)}&ndash;{_pct(hi)}", lo) + "</tr>")
        tid = f"ci-{which}"
        parts.append(
            f'<div class="scroll"><table class="sortable" id="{_esc(tid)}"><caption>Worst-case robust accuracy per '
            f"class with that class's own 95% Wilson interval (the track page gives the worst class the simultaneous, "
            f"Bonferroni-adjusted interval, which is wider), {_esc(which)} checkpoint</caption><thead><tr>"
            + _th("Class", sort="ascending") + _th("Robust (%)", sort="ascending", num=True)
            + _th("Images", sort="ascending", num=True) + _th("95% interval (%)", sort="ascending")
            + "</tr></thead><tbody>" + "".join(rows) + f'</tbody></table></div><p id="{_esc(tid)}-status" '
            'class="sr-only" aria-live="polite"></p>')
    return page(f"{one_line(e.name)} ({e.id}) on {t.id}", "\n".join(parts),
                crumbs=[("Leaderboards", "../index.html"), (t.id, "index.html"), (e.id, None)])


def index_html(boards: Sequence["TrackBoard"]) -> str:
    columns, rows = index_table(boards)
    table = render_table("tracks", columns, [r.cells for r in rows], caption="Tracks", what="tracks",
                         hint="dataset, defense, ...",
                         page=lambda tid: f"{tid}/index.html", row_head="track")
    body = ("<h1>rfbench leaderboards</h1>"
            "<p>Adversarially trained models compared on their <strong>weakest class</strong>: each track ranks its "
            "entries by the worst-class robust accuracy under the worst case over its attack suite, and by the mean "
            "of its worst 20% of classes, in rank groups.</p>" + table
            + f'<h2>How entries are ranked</h2><p class="note">{_esc(RANK_GROUP_LINE)}</p><p class="rule">{_esc(RULE)}</p>')
    return page("rfbench leaderboards", body)


def write_site(boards: Sequence["TrackBoard"], out: Path, stage: Callable[[Path], Path] = Path) -> list[Path]:
    """Write the site into ``out`` (pages of a previous build are overwritten, nothing is deleted).

    ``stage`` maps each page's final path to the path it is written to (the build's staging
    directory, see :mod:`~rfbench.benchmark.leaderboard.pagegroup`); returns the final paths.
    """
    out = Path(out)
    written = []
    for b in boards:
        d = out / b.track.id
        if (d / "track.yaml").exists():
            raise RfbenchError(f"--html {out}: {d} is a leaderboard track directory; give an empty or a site directory")
        atomic_write_text(stage(d / "index.html"), track_html(b))
        written.append(d / "index.html")
        for row in (b.ranking.ranked + b.ranking.identical) if b.ranking else []:
            atomic_write_text(stage(d / entry_file(row.entry)), entry_html(b, row))
            atomic_write_bytes(stage(d / f"{row.entry.id}.json"),
                               (b.track.path.parent / f"{row.entry.id}.json").read_bytes())
            written.append(d / entry_file(row.entry))
    atomic_write_text(stage(out / "index.html"), index_html(boards))
    written.append(out / "index.html")
    atomic_write_text(stage(out / ".nojekyll"), "")  # GitHub Pages: serve the files as they are
    return written
