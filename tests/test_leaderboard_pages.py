"""The leaderboard pages: one row model for Markdown and HTML, their order, and submitted strings that stay text.

Hostile entries are built from a copy of the committed ``fashion-mnist-linf`` track whose names, classes
and ids are edited; the Markdown is rendered by an independent renderer (Python-Markdown) and the HTML
parsed, to check that no submitted string became markup.
"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser

import pytest
from tiny_runs import REPO

from rfbench.benchmark.cli import main
from rfbench.benchmark.leaderboard.board import collect
from rfbench.benchmark.leaderboard.build import index_page, plot_heatmap, track_page
from rfbench.benchmark.leaderboard.html import index_html, track_html
from rfbench.benchmark.leaderboard.rows import track_table
from rfbench.benchmark.leaderboard.schema import find_track
from rfbench.benchmark.leaderboard.text import MAX_CHARS, md_code, md_text

TRACK = "fashion-mnist-linf"
HOSTILE_NAME = 'a|b\nc `code` <script>alert(1)</script> [x](https://evil.example) ![i](https://evil.example/i.png) ' \
               "**bold** https://evil.example www.evil.example me@evil.example $\\evilmacro{$ & done"
MATH_BOMB = "$" + "x^{" * 200 + "x" + "}" * 200 + "$"


def _fork(tmp_path):
    """A leaderboard-only fork holding the committed CPU tracks (no archive)."""
    shutil.copytree(REPO / "leaderboards", tmp_path / "leaderboards",
                    ignore=shutil.ignore_patterns("._writer.rfbench.lock", "archive"))
    return tmp_path


def _edit(root, entry_id, **changes):
    path = root / "leaderboards" / TRACK / f"{entry_id}.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _markdown_html(md: str) -> str:
    markdown = pytest.importorskip("markdown")
    return markdown.markdown(md, extensions=["tables"])


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict]]:
    p = _Tags()
    p.feed(html)
    return p.tags


# -- escaping, by hand ---------------------------------------------------------------------------------------------
def test_md_text_by_hand():
    assert md_text("pgd-at") == "pgd-at"
    assert md_text("a|b") == "a\\|b"
    assert md_text("x\ny\r\nz") == "x y z"
    assert md_text("<b>&") == "&lt;b&gt;&amp;"
    assert md_text("[l](u)") == "\\[l\\](u)"
    assert md_text("`c`") == "\\`c\\`"
    assert md_text("$x$") == "\\$x\\$"
    assert md_text("see https://e.x and www.e.x or a@e.x") == "see https\\://e.x and www\\.e.x or a\\@e.x"
    assert md_text("y" * 500) == "y" * (MAX_CHARS - 1) + "…"
    assert md_code("deep-s0.json") == "`deep-s0.json`"
    assert md_code("a`b") == "``a`b``"


# -- order and columns ---------------------------------------------------------------------------------------------
def test_rows_follow_rank_group_then_the_number_shown():
    """Inside a rank group the worst-class numbers never rise (RoBal 27.0 above TRADES-s2 25.4), groups ascend."""
    board = collect(find_track(TRACK, REPO), REPO)
    rows = track_table(board).rows
    assert len(rows) == len(board.entries) > 10
    keys = [(row.group, -row.ranked.worst) for row in rows]
    assert keys == sorted(keys)
    ids = [row.entry.id for row in rows]
    assert ids.index("robal-s0") < ids.index("trades-s2")


def test_columns_without_values_are_dropped_and_papers_come_from_the_registry():
    board = collect(find_track(TRACK, REPO), REPO)
    table = track_table(board)
    keys = [c.key for c in table.columns]
    # no committed entry has a last checkpoint, standard AutoAttack, published weights or an audit
    assert "last" not in keys and "autoattack" not in keys and "checkpoint" not in keys and "audited" not in keys
    assert {"paper", "architecture", "extra_data"} <= set(keys)
    dafa = next(r for r in table.rows if r.entry.id == "dafa-s0")
    assert dafa.entry.defense.paper == "Lee et al., ICLR 2024"  # submit records the registry's citation
    assert dafa.cells["paper"].href == "https://arxiv.org/abs/2401.12532"
    assert dafa.cells["paper"].detail == "Lee et al., ICLR 2024"
    assert dafa.cells["architecture"].text == "cnn3" and dafa.cells["extra_data"].text == "no"
    page = track_page(board)
    assert "[DAFA: Distance-Aware Fair Adversarial Training](https://arxiv.org/abs/2401.12532) (Lee et al., ICLR 2024)" \
        in page
    assert "last checkpoint" not in page.lower()
    assert "**Rank groups:** Rank group = 1 + the number of entries significantly better" in page


def test_optional_columns_appear_when_an_entry_has_them():
    """A last checkpoint and standard AutoAttack in one entry: both columns appear, '-' for the others."""
    board = collect(find_track(TRACK, REPO), REPO)
    e = next(e for e in board.entries if e.id == "dafa-s0")
    best = e.evaluations["best"]
    best.summary = dict(best.summary, **{"autoattack-standard": dict(best.summary["worst_case"], mean=0.5)})
    e.evaluations = dict(e.evaluations, last=best)
    table = track_table(board)
    keys = [c.key for c in table.columns]
    assert keys.index("autoattack") > keys.index("mean") and "last" in keys
    page = track_page(board)
    header = next(line for line in page.splitlines() if line.startswith("|") and "AutoAttack" in line)
    assert "last checkpoint: worst / mean" in header
    row = next(line for line in page.splitlines() if "[dafa-s0](dafa-s0.json)" in line)
    assert " 50.0 " in row and " 40.8 / 72.0 " in row
    other = next(line for line in page.splitlines() if "[wat-s0](wat-s0.json)" in line)
    assert " - |" in other


def test_weights_links_and_audits_show_when_recorded():
    """An https weights link becomes a link on both pages; a javascript: one is never a link; audits get a column."""
    board = collect(find_track(TRACK, REPO), REPO)
    assert board.ranking is not None
    rows = {r.entry.id: r for r in board.ranking.ranked}
    rows["dafa-s0"].entry.provenance = dict(rows["dafa-s0"].entry.provenance, checkpoint_url="https://example.org/w.pt")
    rows["wat-s0"].entry.provenance = dict(rows["wat-s0"].entry.provenance, checkpoint_url="javascript:alert(1)")
    rows["dafa-s0"].audited = True  # type: ignore[attr-defined]
    table = track_table(board)
    keys = [c.key for c in table.columns]
    assert "checkpoint" in keys and "audited" in keys
    md, web = track_page(board), track_html(board)
    assert "[weights](https://example.org/w.pt)" in md and "javascript" not in md
    assert '<a href="https://example.org/w.pt" rel="noopener noreferrer">weights</a>' in web and "javascript" not in web
    dafa = next(line for line in md.splitlines() if "[dafa-s0](dafa-s0.json)" in line)
    assert dafa.rstrip(" |").endswith("yes")


# -- the index has numbers on both pages ---------------------------------------------------------------------------
def test_index_pages_show_the_same_numbers():
    boards = [collect(t, REPO) for t in (find_track(TRACK, REPO),)]
    md, web = index_page(boards), index_html(boards)
    top = track_table(boards[0]).rows[0].ranked
    for value in (top.worst, top.mean):
        assert f"{100 * value:.1f}" in md
        assert f">{100 * value:.1f}</td>" in web


# -- hostile strings -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Hostile display names and class names on two committed entries, then `leaderboard build --html`."""
    root = _fork(tmp_path_factory.mktemp("hostile"))
    _edit(root, "mart-s0", name=HOSTILE_NAME)
    _edit(root, "wat-s0", name=MATH_BOMB)
    _edit(root, "cfa-s0", name="n" * 2_000_000)  # 2 MB
    out = root / "site"
    assert main(["leaderboard", "build", "--root", str(root), "--html", str(out)]) == 0
    return {"root": root, "out": out, "page": (root / "leaderboards" / TRACK / "README.md").read_text()}


def test_hostile_names_stay_text_in_markdown(hostile):
    page = hostile["page"]
    assert "<script" not in page and "<img" not in page.lower()
    lines = page.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 24  # header, rule, one line per ranked entry: the newline did not split a row
    rendered = _markdown_html("\n".join(table))
    tags = _tags(rendered)
    assert not [t for t, _ in tags if t in ("script", "img", "strong", "code", "em")]
    hrefs = [a.get("href", "") for t, a in tags if t == "a"]
    assert not [h for h in hrefs if "evil" in h], hrefs
    # every row still has every column
    n_cols = sum(1 for t, _ in tags if t == "th")
    rows = rendered.split("<tr>")[2:]
    assert all(row.count("<td") == n_cols for row in rows)
    mart = next(line for line in table if "[mart-s0]" in line)
    assert "a\\|b c \\`code\\` &lt;script&gt;" in mart
    assert "n" * MAX_CHARS not in page and "n" * (MAX_CHARS - 1) + "…" in page  # the 2 MB name, cut


def test_hostile_names_stay_text_in_html(hostile):
    track = (hostile["out"] / TRACK / "index.html").read_text()
    assert "<script>alert(1)</script>" not in track and 'href="https://evil' not in track
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in track
    assert len(track) < 2_000_000  # the 2 MB name is cut on the track page
    entry = (hostile["out"] / TRACK / "cfa-s0.html").read_text()
    assert len(entry) < 2_000_000
    for page in (hostile["out"] / TRACK).glob("*.html"):
        scripts = re.findall(r"<script[ >]", page.read_text())
        assert len(scripts) == 1, page  # only the page's own inlined script
    web = track_html(collect(find_track(TRACK, hostile["root"]), hostile["root"]))
    assert web.count("<tr") == track.count("<tr")


def test_heat_map_draws_hostile_names_and_classes(hostile, tmp_path):
    """Mathtext-breaking labels (a bad macro, 200 nested superscripts) and a 2 MB name: the heat map still draws."""
    png = hostile["root"] / "leaderboards" / TRACK / "heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    board = collect(find_track(TRACK, hostile["root"]), hostile["root"])
    board.entries[0].classes = [MATH_BOMB, "$\\evilmacro{$", "c" * 2_000_000] + board.entries[0].classes[3:]
    out = plot_heatmap(board, tmp_path / "h.png")
    import matplotlib.image

    h, w = matplotlib.image.imread(out).shape[:2]
    assert w < 4000 and h < 4000, (w, h)


def test_unverified_entries_are_listed_not_ranked():
    """A board that keeps unverified entries (a later check may): both pages list them, neither ranks them."""
    board = collect(find_track(TRACK, REPO), REPO)
    board.unverified = {"odd-s0": "no per-sample flags <b>"}  # type: ignore[attr-defined]
    md = track_page(board)
    assert "- `odd-s0`: no per-sample flags &lt;b&gt;" in md
    web = track_html(board)
    assert "<code>odd-s0</code>: no per-sample flags &lt;b&gt;" in web


def test_committed_pages_match_a_fresh_build(tmp_path):
    """`rfbench leaderboard build` on a copy of the committed leaderboards rewrites every Markdown page unchanged."""
    root = _fork(tmp_path)
    shutil.copytree(REPO / "leaderboards", root / "leaderboards", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("._writer.rfbench.lock"))
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    for page in sorted((REPO / "leaderboards").glob("**/README.md")):
        if "archive" in page.parts:
            continue
        fresh = root / page.relative_to(REPO)
        assert fresh.read_text() == page.read_text(), f"{page.relative_to(REPO)} is stale: run rfbench leaderboard build"


# -- in a real browser ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_browser_search_and_sort_on_every_column(tmp_path):
    """Chromium: every column header sorts (its first direction), the search box filters rows and says how many."""
    import functools
    import http.server
    import threading

    from test_leaderboard_html import CHROMIUM, CHROMIUM_ARGS, QuietHandler, _browser

    sync_playwright = _browser()
    root = _fork(tmp_path)
    out = root / "site"
    assert main(["leaderboard", "build", "--root", str(root), "--html", str(out)]) == 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(out)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    problems = []
    table = f"rank-{TRACK}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 900})
                page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.goto(f"{url}/index.html")
                # the index carries the numbers of its Markdown twin
                top = track_table(collect(find_track(TRACK, root), root)).rows[0].ranked
                assert f"{100 * top.worst:.1f}" in (page.text_content("#tracks") or "")
                page.goto(f"{url}/{TRACK}/index.html")
                heads = page.eval_on_selector_all(f"#{table} thead th", "hs => hs.map(h => h.textContent.trim())")
                assert {"Paper", "Architecture", "Extra data"} <= set(heads)
                n = page.locator(f"#{table} tbody tr").count()
                for col in [*range(1, len(heads)), 0]:  # the rank column last: it starts sorted
                    name = heads[col]
                    page.locator(f"#{table} thead th:nth-child({col + 1}) button").click()
                    first = page.get_attribute(f"#{table} thead th:nth-child({col + 1})", "data-sortable")
                    assert page.get_attribute(f"#{table} thead th:nth-child({col + 1})", "aria-sort") == first, name
                    keys = page.eval_on_selector_all(f"#{table} tbody tr",
                                                     f"rows => rows.map(r => r.cells[{col}].getAttribute('data-sort'))")
                    nums = [float(k) for k in keys] if all(re.fullmatch(r"-?[0-9.e-]+", k) for k in keys) else None
                    values = nums if nums is not None else [k.lower() for k in keys]
                    assert values == sorted(values, reverse=first == "descending"), name
                page.fill(f"#{table}-search", "distance-aware")
                visible = page.locator(f"#{table} tbody tr:not([hidden])")
                assert visible.count() == 1 and "dafa-s0" in (visible.first.text_content() or "")
                assert f"1 of {n} rows shown." in (page.text_content(f"#{table}-status") or "")
                page.fill(f"#{table}-search", "pgd-at madry")  # every word must match
                assert page.locator(f"#{table} tbody tr:not([hidden])").count() == 3
                page.fill(f"#{table}-search", "")
                assert page.locator(f"#{table} tbody tr:not([hidden])").count() == n
            finally:
                browser.close()
    finally:
        srv.shutdown()
        srv.server_close()
    assert not problems, problems


def test_papers_agree_with_the_defense_registry():
    """Each paper belongs to a registered defense, and its first author, venue and year are those its docstrings cite."""
    import sys

    from rfbench.defenses.papers import PAPERS
    from rfbench.defenses.registry import DEFENSES

    for name, paper in PAPERS.items():
        cls = DEFENSES.get(name)
        cited = DEFENSES.describe(name) + (sys.modules[cls.__module__].__doc__ or "")
        assert paper.authors.split()[0] in cited, name
        assert str(paper.year) in cited, name
        assert paper.venue == "arXiv" or paper.venue in cited, name
        assert paper.url.startswith("https://"), name
