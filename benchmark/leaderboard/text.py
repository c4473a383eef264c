"""Submitted strings as page text: truncated for display, and never markup.

Entries are untrusted data: a name, a label or a class name must show as the
characters it is, on the Markdown pages (:func:`md_text`, :func:`md_code`),
on the web pages (Jinja2's autoescape, :mod:`rfbench.benchmark.leaderboard.html`)
and in the heat map (Matplotlib text with ``parse_math=False``).
"""

from __future__ import annotations

import re

#: the most characters of a submitted string shown in a table cell or a heat-map label
MAX_CHARS = 60
#: the most characters of a name in the heading of its own page
NAME_CHARS = 200
#: the most characters of a class name in a heat-map column
CLASS_CHARS = 24
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
# CommonMark backslash escapes: characters that open emphasis, code, links, images, table cells, strike-through, math
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|!~$])")
# GitHub autolinks bare URLs, www. hosts and e-mail addresses: escape the character that makes them one
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto)(:)|\b(www)(\.)|(@)")


def one_line(text: object, limit: int | None = MAX_CHARS) -> str:
    """``text`` on one line (control characters and line breaks become one space), cut to ``limit`` characters."""
    s = _CONTROL.sub(" ", str(text)).strip()
    if limit is not None and len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s


def md_text(text: object, limit: int | None = MAX_CHARS) -> str:
    """``text`` as literal Markdown text, safe in a table cell: no markup, links, HTML or line breaks."""
    s = _MD_SPECIAL.sub(r"\\\1", one_line(text, limit))
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _AUTOLINK.sub(lambda m: "".join(f"\\{g}" if g in (":", ".", "@") else g for g in m.groups() if g), s)


def md_code(text: object, limit: int | None = MAX_CHARS) -> str:
    """``text`` as a Markdown code span (a fence longer than any run of backticks inside it)."""
    s = one_line(text, limit)
    run = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (run + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"
