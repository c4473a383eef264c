"""The static web leaderboard (`rfbench leaderboard build --html DIR`), in files and in a real headless browser.

The browser test drives Debian's chromium (``/usr/bin/chromium``, or ``RFBENCH_CHROMIUM``) with Playwright;
it never downloads a browser and skips with the reason when either is missing.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from archived_board import restore_v1
from tiny_runs import REPO

from rfbench.benchmark.cli import main
from rfbench.benchmark.leaderboard.board import collect
from rfbench.benchmark.leaderboard.html import BINS, _luminance, _rgb, contrast, write_site
from rfbench.benchmark.leaderboard.schema import list_tracks

TRACK = "fashion-mnist-linf"
HOSTILE = '<script>alert("x")</script><img src="https://evil.example/x.png">'
CHROMIUM = os.environ.get("RFBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A copy of the committed leaderboards (one entry's display name made hostile) and its site."""
    root = tmp_path_factory.mktemp("fork")
    shutil.copytree(REPO / "leaderboards", root / "leaderboards")  # a leaderboard-only fork
    restore_v1(root)  # the archived version-1 entries have the twins and ties this test needs
    path = root / "leaderboards" / TRACK / "mart-s0.json"
    data = json.loads(path.read_text())
    data["name"] = HOSTILE
    path.write_text(json.dumps(data))
    out = root / "site"
    assert main(["leaderboard", "build", "--root", str(root), "--html", str(out)]) == 0
    return {"root": root, "out": out}


def test_site_has_an_index_a_page_per_track_and_per_entry(site):
    out = site["out"]
    assert (out / "index.html").is_file() and (out / ".nojekyll").is_file()
    for track in list_tracks(site["root"]):
        assert (out / track.id / "index.html").is_file()
        for entry in track.path.parent.glob("*.json"):
            assert (out / track.id / f"{entry.stem}.html").is_file(), entry
            assert (out / track.id / entry.name).read_bytes() == entry.read_bytes()
    page = (out / TRACK / "index.html").read_text()
    assert '<th scope="col" class="num" data-sortable="ascending" aria-sort="ascending">Rank: worst class</th>' in page
    assert "identical to pgd-at-s0" in page and "Wilson interval at level 1 - 0.05/C (Bonferroni" in page
    assert 'href="cb-at-s0.html"' in page  # unranked entries have their page too
    index = (out / "index.html").read_text()
    assert f'href="{TRACK}/index.html"' in index and "How entries are ranked" in index


def test_pages_fetch_nothing_and_escape_entry_text(site):
    from rfbench.defenses.papers import PAPERS

    for page in site["out"].rglob("*.html"):
        text = page.read_text()
        assert "<script src" not in text and "<link rel=\"stylesheet\"" not in text and "@import" not in text
        for paper in PAPERS.values():  # the registry's paper links: plain <a> links, never fetched
            text = text.replace(f'<a href="{paper.url}" rel="noopener noreferrer">', "<a>")
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text.replace('href="https://example', "")), page
        assert "Content-Security-Policy" in text and "default-src 'none'" in text
        assert HOSTILE not in text
    entry = (site["out"] / TRACK / "mart-s0.html").read_text()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in entry


def test_heat_map_text_contrast_is_at_least_aa():
    """Every heat-map colour class gets the text colour (black or white) with WCAG contrast >= 4.5."""
    for b in range(BINS + 1):
        lum = _luminance(_rgb(b / BINS))
        assert max(contrast(lum, 0.0), contrast(lum, 1.0)) >= 4.5, b


def test_html_into_a_track_directory_is_refused(site):
    boards = [collect(t, site["root"]) for t in list_tracks(site["root"])]
    from rfbench.core.errors import RfbenchError

    with pytest.raises(RfbenchError, match="is a leaderboard track directory"):
        write_site(boards, site["root"] / "leaderboards")


def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium; or set RFBENCH_CHROMIUM)")
    return sync_playwright


@pytest.fixture()
def server(site):
    handler = functools.partial(QuietHandler, directory=str(site["out"]))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


def _column(page, table, col):
    return page.eval_on_selector_all(f"#{table} tbody tr", f"rows => rows.map(r => r.cells[{col}].getAttribute('data-sort'))")


@pytest.mark.slow
def test_browser_sorts_columns_stays_local_and_renders(site, server, tmp_path):
    sync_playwright = _browser()
    requests, problems = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{server}/index.html")
            page.get_by_role("link", name=TRACK, exact=True).click()
            page.wait_for_url(f"{server}/{TRACK}/index.html")
            table = f"rank-{TRACK}"
            heads = page.eval_on_selector_all(f"#{table} thead th", "hs => hs.map(h => h.textContent.trim())")
            col = heads.index("Mean robust (%)")
            # a mouse click: the column's first direction is descending
            button = page.get_by_role("button", name="Mean robust (%)")
            button.click()
            values = [float(v) for v in _column(page, table, col)]
            assert values == sorted(values, reverse=True) and len(values) > 3
            assert page.get_attribute(f"#{table} thead th:nth-child({col + 1})", "aria-sort") == "descending"
            assert page.get_attribute(f"#{table} thead th:nth-child(1)", "aria-sort") == "none"
            # the keyboard: Enter on the focused button reverses the order
            button.focus()
            page.keyboard.press("Enter")
            values = [float(v) for v in _column(page, table, col)]
            assert values == sorted(values)
            assert page.get_attribute(f"#{table} thead th:nth-child({col + 1})", "aria-sort") == "ascending"
            assert "Sorted by Mean robust (%), ascending." in page.text_content(f"#{table}-status")
            # a text column sorts too, and the rank column restores the rank order
            page.get_by_role("button", name="Entry").click()
            ids = _column(page, table, heads.index("Entry"))
            assert ids == sorted(ids)
            page.get_by_role("button", name="Rank: worst class").click()  # unsorted again: its first direction
            ranks = [int(v) for v in _column(page, table, 0)]
            assert ranks == sorted(ranks)
            assert page.locator("text=identical to pgd-at-s0").count() >= 1
            page.screenshot(path=str(tmp_path / "track.png"), full_page=True)
            shot = os.environ.get("RFBENCH_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)
            # the hostile display name is shown as text and runs nothing
            page.goto(f"{server}/{TRACK}/mart-s0.html")
            assert HOSTILE in page.text_content("h1")
            page.get_by_role("button", name="Robust (%)").first.click()
        finally:
            browser.close()
    assert (tmp_path / "track.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outside = [u for u in requests if not u.startswith(server + "/") and not u.startswith("data:")]
    assert not outside, outside
    assert not problems, problems
