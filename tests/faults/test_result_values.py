"""A ``result.json`` with impossible values is one line from ``rfbench report``, never a traceback or a silent mix."""

from __future__ import annotations

import json

import pytest
import torch
from faultkit import assert_one_line_error

import rfbench
from rfbench.benchmark.cli import main


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real result of a tiny linear model on random 4x4 images of 3 classes (6 images)."""
    tmp = tmp_path_factory.mktemp("result")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(6, 1, 4, 4)
    y = model(x).argmax(1)  # every image clean-correct, so the checks on predictions pass
    rfbench.evaluate(model, x, y, attacks=["fgsm"], classes=["a", "b", "c"], out=tmp / "r", eps=0.05, device="cpu",
                     quiet=True, batch_size=6)
    return json.loads((tmp / "r" / "result.json").read_text())


def _break(res: dict, case: str) -> dict:
    res = json.loads(json.dumps(res))
    if case == "worst_class 99":
        res["summary"]["clean"]["worst_class"] = 99
    elif case == "worst_class '0'":
        res["summary"]["clean"]["worst_class"] = "0"
    elif case == "classes a string":
        res["classes"] = "abc"
    elif case == "classes empty":
        res["classes"] = []
    elif case == "duplicate classes":
        res["classes"] = ["a", "a", "c"]
    elif case == "NaN mean":
        res["summary"]["worst_case"]["mean"] = float("nan")
    elif case == "mean the string 'NaN'":
        res["summary"]["worst_case"]["mean"] = "NaN"
    elif case == "robust above clean":
        res["per_class"]["clean"][0] = 0.0
        res["per_class"]["worst_case"][0] = 0.5
    return res


@pytest.mark.parametrize("case, fragment", [
    ("worst_class 99", "worst_class is 99"),
    ("worst_class '0'", "worst_class is '0'"),
    ("classes a string", "classes"),
    ("classes empty", "classes"),
    ("duplicate classes", "'a' appears more than once"),
    ("NaN mean", "mean is nan"),
    ("mean the string 'NaN'", "mean is 'NaN'"),
    ("robust above clean", "above its clean accuracy"),
])
def test_impossible_values_are_one_line(good, tmp_path, capsys, case, fragment):
    path = tmp_path / "result.json"
    text = json.dumps(_break(good, case))  # NaN is written as the bare token NaN, which Python's json reads back
    path.write_text(text)
    assert main(["report", str(path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "is not an rfbench result", fragment)


def test_the_untouched_result_reports(good, tmp_path, capsys):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(good))
    assert main(["report", str(path)]) == 0
