"""The result type: one frozen, validated ``EvalResult`` that the file round-trips through and every reader shares."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_metrics import _toy_flags

import rfbench
from rfbench.benchmark.eval.assemble import build_result
from rfbench.benchmark.eval.render import write_outputs
from rfbench.benchmark.eval.result import ClassSummary, EvalResult
from rfbench.benchmark.runner.report import checkpoint_block
from rfbench.core.threat import Threat

SETTINGS = {"fgsm": {"name": "fgsm", "label": "fgsm", "eps": 0.1, "norm": "linf", "scope": "all"},
            "pgd-5": {"name": "pgd", "label": "pgd-5", "eps": 0.1, "norm": "linf", "steps": 5, "scope": "all"}}


@pytest.fixture
def toy() -> dict:
    return build_result(_toy_flags(), classes=["a", "b"], settings=SETTINGS, threat=Threat("linf", 0.1, 5, 0.025),
                        dataset="toy")


def test_typed_fields_by_hand(toy):
    r = EvalResult.from_dict(toy)
    assert r.classes == ("a", "b") and r.names == ("clean", "fgsm", "pgd-5", "worst_case")
    assert r.n_per_class == (3, 3) and r.threat == Threat("linf", 0.1, 5, 0.025)
    assert r.attack_labels == ("fgsm", "pgd-5") and r.worst_case_over == ("fgsm", "pgd-5")
    assert r.per_class["worst_case"] == pytest.approx((1 / 3, 1 / 3))
    s = r.summary["clean"]
    assert isinstance(s, ClassSummary) and s.worst_class == 0 and s.worst == pytest.approx(2 / 3)
    assert s.gap == pytest.approx(1 / 3) and s.worst_ci95 is not None and len(s.worst_ci95) == 2
    assert r.worst_class_name() == "a"


def test_the_file_round_trips_through_the_type(toy, tmp_path):
    r = EvalResult.from_dict(toy)
    assert r.to_dict() == toy and EvalResult.from_dict(r.to_dict()) == r
    write_outputs(r, tmp_path)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(toy)) and EvalResult.load(tmp_path / "result.json") == r


def test_the_result_cannot_be_changed(toy):
    r = EvalResult.from_dict(toy)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.classes = ("x", "y")  # type: ignore[misc]
    view = r["summary"]
    view["worst_case"]["worst"] = 0.99  # a copy: the result keeps its number
    toy["summary"]["worst_case"]["worst"] = 0.98  # nor does the dictionary it was built from reach it
    assert r["summary"]["worst_case"]["worst"] == pytest.approx(1 / 3)
    assert r.summary["worst_case"].worst == pytest.approx(1 / 3)


def test_an_invalid_result_is_refused_with_its_problem(toy):
    toy["per_class"]["pgd-5"] = [0.5]
    with pytest.raises(ValueError, match="per_class"):
        EvalResult.from_dict(toy)
    with pytest.raises(ValueError, match="JSON object"):
        EvalResult.from_dict(["not", "a", "result"])  # type: ignore[arg-type]


def test_report_and_the_run_result_read_the_same_type(toy, tmp_path):
    """``rfbench.Report`` is a view of the result; the run result (and so the leaderboard entry) reads it too."""
    write_outputs(EvalResult.from_dict(toy), tmp_path)
    report = rfbench.Report.load(tmp_path)
    assert isinstance(report.result, EvalResult) and report.to_dict() == EvalResult.load(tmp_path / "result.json")
    assert report.worst_case["class"] == "a"
    block = checkpoint_block(report.result, "eval-best/result.json")
    assert block["per_class"] == toy["per_class"] and block["attacks"] == ["fgsm", "pgd-5"]
