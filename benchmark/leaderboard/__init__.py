"""Leaderboards: tracks, entries (JSON data), their checks, submission and the rendered pages.

* :mod:`~rfbench.benchmark.leaderboard.schema`: ``track.yaml`` and ``rfbench.entry/1`` dataclasses;
* :mod:`~rfbench.benchmark.leaderboard.check`: ``rfbench leaderboard check`` (schema, protocol, recomputed summaries, flags);
* :mod:`~rfbench.benchmark.leaderboard.submit`: ``rfbench leaderboard submit`` (an entry from a finished run);
* :mod:`~rfbench.benchmark.leaderboard.build`: ``rfbench leaderboard build`` (README, per-track pages, heat maps);
* :mod:`~rfbench.benchmark.leaderboard.board`: a track's checked entries and ranking, with the texts both pages share;
* :mod:`~rfbench.benchmark.leaderboard.rows`: the one row model (columns, cells) that the Markdown and web pages render;
* :mod:`~rfbench.benchmark.leaderboard.text`: submitted strings as page text (cut, escaped, never markup);
* :mod:`~rfbench.benchmark.leaderboard.ranking`: rank groups honest about noise, identical entries, the Wilson interval;
* :mod:`~rfbench.benchmark.leaderboard.html`: ``rfbench leaderboard build --html DIR`` (the static web leaderboard);
* :mod:`~rfbench.benchmark.leaderboard.paths`: paths inside entries stay inside the repository.
"""

from rfbench.benchmark.leaderboard.check import check_entry, check_entry_file, read_entry_file
from rfbench.benchmark.leaderboard.schema import (
           ENTRY_SCHEMA,
           Entry,
           EntryError,
           Track,
           find_track,
           leaderboards_root,
           load_track,
)

__all__ = ["ENTRY_SCHEMA", "Entry", "EntryError", "Track", "check_entry", "check_entry_file", "find_track",
           "leaderboards_root", "load_track", "read_entry_file"]
