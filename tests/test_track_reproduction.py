"""The CPU track's reference entry reproduces from this checkout (opt-in: ``pytest --run-track``).

``rfbench run leaderboards/fashion-mnist-linf/track.yaml --defense pgd-at``
with seed 0 must agree with the committed ``pgd-at`` entries within seed noise
(``rfbench leaderboard compare``).  About 10 to 15 minutes per track on 2 CPU cores (protocol version 2), so it is
not part of the default suite; docs/benchmark-notes.md records its last run.
"""

from __future__ import annotations

import pytest
from tiny_runs import REPO

from rfbench.benchmark.cli import main

pytestmark = pytest.mark.track


@pytest.mark.parametrize("track", ["fashion-mnist-linf", "fashion-mnist-lt50-linf"])
def test_pgd_at_track_run_reproduces_the_committed_entries(track, tmp_path, capsys):
    out = tmp_path / f"{track}-pgd-at-s0"
    assert main(["run", str(REPO / "leaderboards" / track / "track.yaml"), "--defense", "pgd-at", "--out", str(out),
                 "--quiet"]) == 0
    rc = main(["leaderboard", "compare", str(out), "--track", track, "--root", str(REPO)])
    report = capsys.readouterr().out
    assert rc == 0, report
    assert "REPRODUCED" in report
