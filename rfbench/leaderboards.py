"""``rfbench.leaderboards``: the public face of :mod:`rfbench.benchmark.leaderboard` (tracks, entries, checks).

``import rfbench.leaderboards`` works; the code lives in ``benchmark/leaderboard/`` and the
leaderboard data (tracks, entries, paper tables) in the repository's ``leaderboards/`` folder.
"""

from rfbench.benchmark.leaderboard import *  # noqa: F401,F403  (re-exported by name below)
from rfbench.benchmark.leaderboard import __all__  # noqa: F401
