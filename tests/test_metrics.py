"""Metrics, checks and the result builder on hand-computed toys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rfbench.attacks.spec import Threat
from rfbench.benchmark.eval import checks as C
from rfbench.benchmark.eval import metrics as M
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.eval.result import build_result, markdown_table, validate_result
from rfbench.benchmark.models import create_model

# 3 classes: class 0 has 4 samples, class 1 has 2, class 2 has 4
Y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
OK = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 1], dtype=bool)  # 3/4, 1/2, 1/4


def test_per_class_accuracy_by_hand():
    np.testing.assert_allclose(M.per_class_accuracy(OK, Y, 3), [0.75, 0.5, 0.25])
    acc = M.per_class_accuracy(OK, Y, 4)  # a class with no sample is NaN, not 0
    assert math.isnan(acc[3])


def test_summary_by_hand():
    acc = np.array([0.9, 0.5, 0.7, 0.2, 0.8, 0.6, 0.4, 0.3, 1.0, 0.6])
    s = M.summarize(acc)
    assert s["mean"] == pytest.approx(0.6)
    assert (s["worst"], s["worst_class"], s["best"], s["best_class"]) == (0.2, 3, 1.0, 8)
    assert s["gap"] == pytest.approx(0.8)
    # population SD: deviations .3 -.1 .1 -.4 .2 0 -.2 -.3 .4 0 -> squares sum 0.6, /10 -> 0.06
    assert s["std"] == pytest.approx(math.sqrt(0.06))
    assert s["nsd"] == pytest.approx(math.sqrt(0.06) / 0.6)
    assert s["tail20"] == pytest.approx((0.2 + 0.3) / 2)  # worst 20% of 10 classes = 2 classes


def test_confusion_and_cfps_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, 3), [[1, 1, 0], [0, 2, 0], [1, 1, 0]])
    # misclassified: (0->1), (2->1), (2->0): class 1 absorbs 2 of 3 errors, class 0 one
    np.testing.assert_allclose(M.class_false_positive_score(y, pred, 3), [1 / 3, 2 / 3, 0])


def test_boundary_error_and_dafa_rho_by_hand():
    np.testing.assert_allclose(M.boundary_error([0.9, 0.8], [0.5, 0.2]), [0.4, 0.6])
    # worst 0.2 -> 0.3 (+50%), average 0.50 -> 0.48 (-4%): rho = 0.5 - 0.04
    assert M.dafa_rho(avg_model=0.48, worst_model=0.3, avg_base=0.5, worst_base=0.2) == pytest.approx(0.46)


def test_bootstrap_ci():
    y = np.repeat([0, 1, 2], 200)
    ok = np.concatenate([np.ones(200), np.zeros(200), np.arange(200) % 2 == 0]).astype(bool)
    per_class, worst = M.bootstrap_ci(ok, y, 3, n_boot=2000, seed=0)
    np.testing.assert_allclose(per_class[0], [1, 1])  # a class always right has no spread
    np.testing.assert_allclose(worst, [0, 0])  # class 1 is always wrong: worst class is exactly 0
    se = math.sqrt(0.25 / 200)  # binomial standard error of class 2
    assert per_class[2, 0] == pytest.approx(0.5 - 1.96 * se, abs=0.015)
    assert per_class[2, 1] == pytest.approx(0.5 + 1.96 * se, abs=0.015)
    # a bootstrap of the worst class among two close classes sits below the smaller point estimate
    y2 = np.repeat([0, 1], 100)
    ok2 = np.concatenate([np.arange(100) < 30, np.arange(100) < 32])
    _, w2 = M.bootstrap_ci(ok2, y2, 2, n_boot=2000, seed=1)
    assert w2[0] < 0.30 < w2[1] and w2[1] < 0.32 + 1.96 * math.sqrt(0.32 * 0.68 / 100)


def test_class_groups():
    assert M.class_groups([100] * 10, None) is None
    g = M.class_groups([5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100], 50)
    assert g == {"head": [0, 1, 2], "middle": [3, 4, 5, 6], "tail": [7, 8, 9]}
    g100 = M.class_groups([500, 150, 101, 100, 50, 20, 19, 5], 100)
    assert g100 == {"many": [0, 1, 2], "medium": [3, 4, 5], "few": [6, 7]}
    assert M.group_means(np.array([1.0, 0.5, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6]), g100)["few"] == pytest.approx(0.55)


def test_weight_norms_of_a_linear_head():
    model = create_model("smallcnn", 3, 1, width=0.25)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[0, :2] = torch.tensor([3.0, 4.0])
        model.head.weight[2, 0] = 2.0
    np.testing.assert_allclose(M.class_weight_norms(model), [5.0, 0.0, 2.0])
    assert M.class_weight_norms(torch.nn.Sequential(torch.nn.Flatten())) is None
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_paired_inversions_use_a_noise_threshold():
    y = np.zeros(100, dtype=int)
    weak = np.arange(100) < 50
    strong_ok = weak.copy()
    strong_ok[50:53] = True  # 3 more correct under the "stronger" attack: z = 3/sqrt(3) = 1.7 -> minor
    bad, minor = C.paired_inversions(strong_ok, weak, y, 1)
    assert bad == [] and minor[0]["class"] == 0 and minor[0]["excess"] == pytest.approx(0.03)
    strong_bad = weak.copy()
    strong_bad[50:60] = True  # 10 more: z = 3.2 -> violation
    bad, _ = C.paired_inversions(strong_bad, weak, y, 1)
    assert bad[0]["z"] == pytest.approx(10 / math.sqrt(10), abs=0.01)


def _toy_flags():
    """6 samples of 2 classes, attacks fgsm and pgd-5 (both on all points)."""
    y = np.array([0, 0, 0, 1, 1, 1])
    f = SampleFlags.empty(np.arange(10, 16), y, ["fgsm", "pgd-5"], {"static": {}})
    f.clean_pred[:] = [0, 0, 1, 1, 1, 1]  # sample 2 wrong on clean
    f.adv_pred[:, 0] = [0, 1, 1, 1, 1, 0]  # fgsm breaks 1 and 5
    f.adv_pred[:, 1] = [0, 1, 1, 1, 0, 1]  # pgd breaks 1 and 4
    f.ran[:] = True
    f.pert[:] = 0.1
    f.done[:] = True
    return f


def test_flags_worst_case_by_hand(tmp_path):
    f = _toy_flags()
    np.testing.assert_array_equal(f.worst_case(["fgsm", "pgd-5"]), [1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(f.worst_case_pred(["fgsm", "pgd-5"]), [0, 1, 1, 1, 0, 0])
    f.save(tmp_path / "f.npz")
    g = SampleFlags.load(tmp_path / "f.npz")
    assert g.labels == f.labels and np.array_equal(g.adv_pred, f.adv_pred) and np.array_equal(g.index, f.index)


def test_build_result_by_hand():
    f = _toy_flags()
    settings = {"fgsm": {"name": "fgsm", "label": "fgsm", "eps": 0.1, "norm": "linf", "scope": "all"},
                "pgd-5": {"name": "pgd", "label": "pgd-5", "eps": 0.1, "norm": "linf", "steps": 5, "scope": "all"}}
    r = build_result(f, classes=["a", "b"], settings=settings, threat=Threat("linf", 0.1, 5, 0.025), dataset="toy",
                     n_boot=50)
    validate_result(r)
    assert r["schema"] == "rfbench.result/1" and r["n_per_class"] == [3, 3]
    assert r["per_class"]["clean"] == pytest.approx([2 / 3, 1.0])
    assert r["per_class"]["fgsm"] == pytest.approx([1 / 3, 2 / 3])
    assert r["per_class"]["pgd-5"] == pytest.approx([1 / 3, 2 / 3])
    assert r["per_class"]["worst_case"] == pytest.approx([1 / 3, 1 / 3])
    assert r["boundary_error"] == pytest.approx([1 / 3, 2 / 3])
    assert r["summary"]["worst_case"]["worst_class"] == 0 and r["summary"]["clean"]["gap"] == pytest.approx(1 / 3)
    assert r["confusion"]["worst_case"] == [[1, 2], [2, 1]]
    assert r["clean_acc"] == pytest.approx(83.33) and r["eps"] == "0.1" and r["autoattack_acc"] is None
    assert r["checks"]["attack_order"]["pairs"] == ["pgd-5 <= fgsm"]
    assert r["checks"]["robust_le_clean"]["verdict"] == "pass"
    assert r["cfps"]["worst_case"] == pytest.approx([0.5, 0.5])  # errors: 0->1 twice, 1->0 twice
    assert "worst class a" in markdown_table(r)


def test_validate_result_names_the_problem():
    f = _toy_flags()
    settings = {lab: {"name": n, "label": lab, "eps": 0.1, "norm": "linf", "scope": "all"}
                for lab, n in (("fgsm", "fgsm"), ("pgd-5", "pgd"))}
    r = build_result(f, classes=["a", "b"], settings=settings, threat=Threat("linf", 0.1, 5, 0.025), dataset="toy", n_boot=20)
    r["per_class"]["pgd-5"] = [0.5]
    with pytest.raises(ValueError, match="per_class"):
        validate_result(r)
