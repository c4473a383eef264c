"""The line under the per-class table says exactly what its numbers are.

* the worst class's interval is labelled as the simultaneous (Bonferroni-adjusted) interval, and
  it is that interval (hand-checked numbers);
* classes tied at the minimum are all named, not one of them;
* a failed or warned check is named with its reason, and ``rfbench eval --strict`` exits 1 on it.
"""

from __future__ import annotations

import pytest
import torch

import rfbench
from rfbench.benchmark.cli import main
from rfbench.benchmark.eval.summary_line import check_problems, checks_text
from rfbench.core.perclass import WORST_INTERVAL_LABEL, wilson_interval, worst_class_interval_from_counts, worst_classes


def test_the_worst_class_interval_is_the_bonferroni_one_hand_checked():
    """73/300 correct in the worst of 10 classes: plain 95% Wilson 19.8-29.5; with z = 2.807
    (level 1 - 0.05/10) 18.1-31.9 (Wilson's formula by hand)."""
    lo, hi = wilson_interval(73, 300)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (19.8, 29.5)
    lo, hi = worst_class_interval_from_counts([73] + [250] * 9, [300] * 10)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (18.1, 31.9)
    assert "Bonferroni" in WORST_INTERVAL_LABEL and "simultaneous" in WORST_INTERVAL_LABEL


def test_worst_classes_lists_ties():
    assert worst_classes([0.5, 0.0, 0.3, 0.0, float("nan")]) == [1, 3]
    assert worst_classes([0.2, 0.1]) == [1]
    assert worst_classes([float("nan")]) == []


class OneClass(torch.nn.Module):
    """Predicts class 1 for every image (a broken model)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.w.numel()) + self.w + x.flatten(1).mean(1, keepdim=True) * 0
        logits[:, 1] += 5.0
        return logits


def test_footer_names_tied_classes_and_the_failing_check():
    x, y = torch.rand(30, 1, 4, 4), torch.arange(30) % 3
    report = rfbench.evaluate(OneClass(), x, y, eps=0.1, attacks=["fgsm"], classes=["cat", "dog", "frog"],
                              device="cpu", quiet=True)
    foot = report.to_markdown().strip().splitlines()[-1]
    assert "2 classes tie at 0.0% as the worst (cat, frog;" in foot, foot
    assert WORST_INTERVAL_LABEL in foot
    assert "checks: fail (predictions (fail): the model predicts class 1 for every sample" in foot, foot
    assert report.worst_case["tied"] == ["cat", "frog"]
    assert "2 classes tie" in repr(report) and "predictions (fail)" in repr(report)


def test_check_problems_reads_every_kind_of_reason():
    checks = {"robust_le_clean": {"verdict": "pass", "detail": "x"},
              "attack_order": {"verdict": "fail", "detail": "stronger attack not weaker per class", "violations": [{}, {}]},
              "autoattack_flags": {"verdict": "warn", "detail": "d", "flags": {"aa": ["randomness"]}},
              "model": {"verdict": "warn", "detail": "d", "findings": {"probabilities": "outputs look like probabilities"}},
              "overall": "fail"}
    assert check_problems(checks) == ["attack_order (fail): 2 violation(s) of 'stronger attack not weaker per class'",
                                      "autoattack_flags (warn): flagged by aa",
                                      "model (warn): outputs look like probabilities"]
    assert checks_text({"a": {"verdict": "pass"}, "overall": "pass"}) == "checks: pass"


@pytest.mark.parametrize("strict", [False, True])
def test_eval_strict_exits_nonzero_on_a_failed_check(tmp_path, capsys, strict):
    nets = tmp_path / "nets.py"
    nets.write_text("import torch\nclass Net(torch.nn.Module):\n    def __init__(self, num_classes):\n"
                    "        super().__init__(); self.l = torch.nn.Linear(784, num_classes)\n"
                    "    def forward(self, x):\n        out = self.l(x.flatten(1)) * 0\n        out[:, 1] += 1\n"
                    "        return out\n"
                    "def build(num_classes):\n    return Net(num_classes)\n")
    argv = ["eval", "--model", f"{nets}:build", "--allow-code", "--dataset", "fashion-mnist", "--n-per-class", "2",
            "--attack", "fgsm", "--device", "cpu", "--out", str(tmp_path / "e"), "--quiet"]
    code = main(argv + (["--strict"] if strict else []))
    captured = capsys.readouterr()
    assert "predictions (fail): the model predicts class 1 for every sample" in captured.out
    assert "9 classes tie at 0.0% as the worst" in captured.out
    if strict:
        assert code == 1 and "--strict" in captured.err and "predictions (fail)" in captured.err
    else:
        assert code == 0
