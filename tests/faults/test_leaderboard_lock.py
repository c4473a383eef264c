"""One writer per leaderboard: ``leaderboard submit`` and ``build`` share one ``flock`` on the leaderboard root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from faultkit import assert_one_line_error

from rfbench.benchmark.cli import main

HOLD = ("import sys, time\n"
        "from pathlib import Path\n"
        "from rfbench.core.io.lock import exclusive_leaderboard\n"
        "with exclusive_leaderboard(Path(sys.argv[1])):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n")


def test_submit_and_build_refused_while_another_writer_holds_the_leaderboard(tmp_path, capsys):
    (tmp_path / "leaderboards").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "rfbench-leaderboard-holder"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    try:
        for argv in (["leaderboard", "build", "--root", str(tmp_path)],
                     ["leaderboard", "submit", str(tmp_path / "no-run"), "--track", "t", "--root", str(tmp_path)]):
            assert main(argv) == 2
            assert_one_line_error(capsys.readouterr().err, f"leaderboard {tmp_path} is in use by pid {proc.pid}",
                                  "rfbench-leaderboard-holder", "--root")
        assert sorted(p.name for p in (tmp_path / "leaderboards").iterdir()) == ["._writer.rfbench.lock"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert main(["leaderboard", "build", "--root", str(tmp_path)]) == 0  # a SIGKILLed holder's lock is free
    capsys.readouterr()
