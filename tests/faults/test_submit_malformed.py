"""``rfbench leaderboard submit`` on a malformed run directory: one line naming what is wrong, and nothing written.

The run directories are made by hand (no training): a ``result.json`` of the ``rfbench.run/1`` schema with
one checkpoint block, a trainer ``config.yaml`` and a flag file, each then broken in one way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from faultkit import assert_one_line_error
from tiny_runs import REPO

from rfbench.benchmark.cli import main
from rfbench.benchmark.runner.report import RUN_SCHEMA

TRACK = "fashion-mnist-linf"


def _run_dir(path: Path) -> Path:
    (path / "train").mkdir(parents=True)
    (path / "eval").mkdir()
    (path / "eval" / "flags.npz").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: never reached here
    (path / "train" / "config.yaml").write_text("defense: pgd-at\nseed: 0\nmodel: smallcnn\n")
    block = {"attacks": ["pgd"], "worst_case_over": ["pgd"], "n_per_class": [1] * 10, "classes": list("abcdefghij"),
             "per_class": {}, "summary": {}, "checks": {}, "flags_file": "eval/flags.npz",
             "threat": {"norm": "linf", "eps": 0.1}}
    (path / "result.json").write_text(json.dumps({"schema": RUN_SCHEMA, "dataset": "fashion-mnist", "config": {},
                                                  "checkpoints": {"best": block}, "cost": {}, "provenance": {}}))
    return path


def _edit(path: Path, change) -> None:
    data = json.loads((path / "result.json").read_text())
    change(data)
    (path / "result.json").write_text(json.dumps(data))


CASES = {
    "result.json not JSON": (lambda p: (p / "result.json").write_text("{not json"), "corrupt file", "not valid JSON"),
    "result.json a list": (lambda p: (p / "result.json").write_text("[1, 2]"), "a JSON list, not an object"),
    "result.json a directory": (lambda p: ((p / "result.json").unlink(), (p / "result.json").mkdir()),
                                "result.json: a directory"),
    "result.json a FIFO": (lambda p: ((p / "result.json").unlink(), os.mkfifo(p / "result.json")),
                           "result.json: not a regular file"),
    "another schema": (lambda p: _edit(p, lambda d: d.update(schema="rfbench.result/2")),
                       "is not an `rfbench run` result (schema 'rfbench.result/2')"),
    "no config.yaml": (lambda p: (p / "train" / "config.yaml").unlink(), "file not found", "config.yaml"),
    "config.yaml a list": (lambda p: (p / "train" / "config.yaml").write_text("- 1\n- 2\n"),
                           "config.yaml is not a training config", "integer seed"),
    "config.yaml bad YAML": (lambda p: (p / "train" / "config.yaml").write_text("defense: [\n"),
                             "corrupt file", "not valid YAML"),
    "no checkpoints": (lambda p: _edit(p, lambda d: d.pop("checkpoints")), "a field is missing: 'checkpoints'"),
    "checkpoints empty": (lambda p: _edit(p, lambda d: d.update(checkpoints={})), "its checkpoints are empty"),
    "checkpoints a list": (lambda p: _edit(p, lambda d: d.update(checkpoints=[1])), "wrong type or value"),
    "flag file missing": (lambda p: (p / "eval" / "flags.npz").unlink(), "flag file of its 'best' evaluation",
                          "missing or not a regular file"),
    "a block without per_class": (lambda p: _edit(p, lambda d: d["checkpoints"]["best"].pop("per_class")),
                                  "a field is missing: 'per_class'"),
}


@pytest.fixture
def root(tmp_path):
    (tmp_path / "repo" / "leaderboards" / TRACK).mkdir(parents=True)
    shutil.copy(REPO / "leaderboards" / TRACK / "track.yaml", tmp_path / "repo" / "leaderboards" / TRACK)
    return tmp_path / "repo"


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_run_directory_is_one_line_and_writes_nothing(root, tmp_path, capsys, case):
    breaker, *fragments = CASES[case]
    run = _run_dir(tmp_path / "run")
    breaker(run)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert main(["leaderboard", "submit", str(run), "--track", TRACK, "--root", str(root),
                 "--code", "https://example.org/x.py"]) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)
    after = sorted(p.relative_to(root) for p in root.rglob("*") if not p.name.endswith(".rfbench.lock"))
    assert after == before
