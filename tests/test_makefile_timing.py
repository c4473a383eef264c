"""``make test`` ends with its own timing, passed or failed (run against a stand-in virtual environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("rc", [0, 1])
def test_make_test_prints_its_time(tmp_path, rc):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, body in (("python", f'echo "python $*"; exit {rc}'), ("rfbench", 'echo "rfbench $*"')):
        exe = venv / "bin" / name
        exe.write_text(f"#!/bin/sh\n{body}\n")
        exe.chmod(0o755)
    for stamp in (".rfbench-installed", ".rfbench-test-installed"):  # newer than setup.cfg: no install step
        (venv / stamp).touch()
    proc = subprocess.run(["make", "-s", "test", f"VENV={venv}", "SMOKE_OUT=" + str(tmp_path / "smoke")], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "MAKEFLAGS": ""}, timeout=60)
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == (0 if rc == 0 else 2), proc.stderr
    assert last.startswith("make test: passed in " if rc == 0 else "make test: FAILED in ") and last.endswith("(tests, then smoke)")
    assert ("rfbench smoke" in proc.stdout) == (rc == 0)
