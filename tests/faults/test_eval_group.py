"""An evaluation is one group of files: a kill inside ``--overwrite``'s swap never leaves a mix that a reader accepts,
the next ``eval`` finishes the swap, and an interrupted ``--overwrite`` resumes the batches it had staged."""

from __future__ import annotations

import json
import os

import pytest
import torch
from faultkit import assert_one_line_error

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval import group, harness
from rfbench.models import create_model


def _eval(weights, out, *attacks, extra=()):
    argv = ["eval", "--model", "smallcnn", "--weights", str(weights), "--dataset", "fashion-mnist", "--n-per-class", "2",
            "--batch-size", "5", "--device", "cpu", "--quiet", "--out", str(out), *extra]
    for a in attacks:
        argv += ["--attack", a]
    return main(argv)


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    torch.save(create_model("smallcnn", num_classes=10, in_channels=1).state_dict(), path)
    return path


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even except-Exception clean-ups)."""


def test_a_kill_inside_the_swap_is_refused_by_report_and_finished_by_the_next_eval(tmp_path, weights, monkeypatch,
                                                                                    capsys):
    out = tmp_path / "e"
    assert _eval(weights, out, "fgsm") == 0
    real_replace = os.replace

    def replace(src, dst):
        if str(dst) == str(out / group.FLAGS_FILE) and group.staging_dir(out).name in str(src):
            raise Killed  # killed after the new result.json moved in, before the new flags.npz
        return real_replace(src, dst)

    monkeypatch.setattr(group.os, "replace", replace)
    with pytest.raises(Killed):
        _eval(weights, out, "pgd:steps=2", extra=["--overwrite"])
    monkeypatch.undo()
    assert [a["label"] for a in json.loads((out / "result.json").read_text())["attacks"]] == ["pgd-2"]
    capsys.readouterr()
    assert main(["report", str(out / "result.json")]) == 2  # the new result.json beside the old flags.npz
    assert_one_line_error(capsys.readouterr().err, "different evaluations", "again to finish it")
    # the next eval of that directory (the same command, or any other) finishes the swap first
    assert _eval(weights, out, "pgd:steps=2") == 0
    assert not group.staging_dir(out).exists()
    assert main(["report", str(out / "result.json")]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["provenance"]["flags_sha256"] == group.file_sha256(out / group.FLAGS_FILE)


def test_an_interrupted_overwrite_resumes_its_staged_batches(tmp_path, weights, monkeypatch):
    out = tmp_path / "e"
    assert _eval(weights, out, "fgsm") == 0
    old = (out / "result.json").read_bytes()

    def killed(*a, **k):
        raise Killed  # after every batch of the new evaluation is staged, before its result is written

    monkeypatch.setattr(harness, "write_outputs", killed)
    with pytest.raises(Killed):
        _eval(weights, out, "pgd:steps=2", extra=["--overwrite"])
    monkeypatch.undo()
    assert (out / "result.json").read_bytes() == old
    assert (group.staging_dir(out) / group.FLAGS_FILE).exists()
    calls = []
    real = harness._attack_piece
    monkeypatch.setattr(harness, "_attack_piece", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert _eval(weights, out, "pgd:steps=2", extra=["--overwrite"]) == 0
    assert calls == []  # nothing redone: every batch came from the staged flag file
    assert [a["label"] for a in json.loads((out / "result.json").read_text())["attacks"]] == ["pgd-2"]
    # a staged evaluation of *another* configuration is discarded, not resumed
    monkeypatch.setattr(harness, "write_outputs", killed)
    with pytest.raises(Killed):
        _eval(weights, out, "fgsm", extra=["--overwrite"])
    monkeypatch.undo()
    assert _eval(weights, out, "pgd:steps=3", extra=["--overwrite"]) == 0
    assert [a["label"] for a in json.loads((out / "result.json").read_text())["attacks"]] == ["pgd-3"]
