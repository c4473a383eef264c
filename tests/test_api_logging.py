"""The Python API reports progress on stderr when the program configures no logging; ``quiet=True`` silences it.

Each case runs a script in a subprocess whose stderr goes to a file (not a terminal), as
``python my_eval.py 2> err`` would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import logging, sys
import torch
import rfbench
{setup}
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
x, y = torch.rand(30, 1, 4, 4), torch.arange(30) % 3
report = rfbench.evaluate(model, x, y, eps=0.1, attacks=["fgsm"], device="cpu"{kwargs})
print("REPORT", report.worst_case["accuracy"])
"""


def run_script(tmp_path: Path, setup: str = "", kwargs: str = "") -> tuple[str, str]:
    script = tmp_path / "my_eval.py"
    script.write_text(SCRIPT.format(setup=setup, kwargs=kwargs))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=out, stderr=err, check=True, timeout=300)
    return (tmp_path / "out").read_text(), (tmp_path / "err").read_text()


def test_progress_reaches_stderr_without_any_logging_setup(tmp_path):
    out, err = run_script(tmp_path)
    assert "REPORT" in out
    assert "evaluating 30 samples (3 classes)" in err, err
    assert "eval finished: 30/30 images" in err, err


def test_quiet_silences_it(tmp_path):
    out, err = run_script(tmp_path, kwargs=", quiet=True")
    assert "REPORT" in out
    assert "evaluating" not in err and "eval finished" not in err, err


@pytest.mark.parametrize("setup", ["logging.basicConfig(level=logging.WARNING, stream=sys.stderr)",
                                   "logging.getLogger('rfbench').addHandler(logging.NullHandler())"])
def test_a_program_that_configures_logging_keeps_its_choice(tmp_path, setup):
    out, err = run_script(tmp_path, setup=setup)
    assert "REPORT" in out
    assert "evaluating" not in err and "eval finished" not in err, err


def test_the_handler_lives_only_for_the_call(monkeypatch):
    import io
    import logging

    from rfbench.benchmark.eval.api import default_logging

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # no logging configured (pytest's capture set aside)
    logger = logging.getLogger("rfbench")
    before = (list(logger.handlers), logger.level)
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    with default_logging(quiet=False):
        logging.getLogger("rfbench.benchmark.eval.harness").info("working")
        logging.getLogger("other").info("not ours")
    logging.getLogger("rfbench.benchmark.eval.harness").info("after")
    assert stream.getvalue() == "working\n"
    assert (list(logger.handlers), logger.level) == before
