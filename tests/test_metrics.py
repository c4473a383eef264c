"""Metrics, checks and the result builder on hand-computed toys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rfbench.attacks.spec import Threat
from rfbench.benchmark.eval import checks as C
from rfbench.benchmark.eval import metrics
from rfbench.benchmark.eval.assemble import build_result
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.eval.render import markdown_table
from rfbench.benchmark.eval.result import validate_result
from rfbench.core import perclass as P
from rfbench.models import create_model

# 3 classes: class 0 has 4 samples, class 1 has 2, class 2 has 4
Y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
OK = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 1], dtype=bool)  # 3/4, 1/2, 1/4


def test_per_class_accuracy_by_hand():
    np.testing.assert_allclose(metrics.per_class_accuracy(OK, Y, 3), [0.75, 0.5, 0.25])
    acc = metrics.per_class_accuracy(OK, Y, 4)  # a class with no sample is NaN, not 0
    assert math.isnan(acc[3])


def test_summary_by_hand():
    acc = np.array([0.9, 0.5, 0.7, 0.2, 0.8, 0.6, 0.4, 0.3, 1.0, 0.6])
    s = metrics.summarize(acc)
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
    np.testing.assert_array_equal(metrics.confusion_matrix(y, pred, 3), [[1, 1, 0], [0, 2, 0], [1, 1, 0]])
    # misclassified: (0->1), (2->1), (2->0): class 1 absorbs 2 of 3 errors, class 0 one
    np.testing.assert_allclose(metrics.class_false_positive_score(y, pred, 3), [1 / 3, 2 / 3, 0])


def test_boundary_error_and_dafa_rho_by_hand():
    np.testing.assert_allclose(metrics.boundary_error([0.9, 0.8], [0.5, 0.2]), [0.4, 0.6])
    # worst 0.2 -> 0.3 (+50%), average 0.50 -> 0.48 (-4%): rho = 0.5 - 0.04
    assert metrics.dafa_rho(avg_model=0.48, worst_model=0.3, avg_base=0.5, worst_base=0.2) == pytest.approx(0.46)


def test_wilson_intervals_against_scipy_and_at_the_ends():
    from scipy.stats import binomtest

    for k, n in [(0, 100), (1, 100), (37, 100), (99, 100), (100, 100), (3, 7), (0, 1), (1, 1)]:
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert P.wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    lo, hi = P.wilson_interval(0, 100)  # 0 of 100 robust: not [0, 0]
    assert lo == 0.0 and hi == pytest.approx(0.0370, abs=1e-4)
    assert P.wilson_interval(100, 100) == (pytest.approx(0.9630, abs=1e-4), 1.0)
    assert all(math.isnan(v) for v in P.wilson_interval(0, 0))


def test_per_class_and_worst_class_intervals():
    y = np.repeat([0, 1, 2], 100)
    ok = np.concatenate([np.ones(100), np.zeros(100), np.arange(100) % 2 == 0]).astype(bool)
    ci = metrics.per_class_intervals(ok, y, 4)
    assert ci[0, 1] == 1.0 and ci[0, 0] < 1.0 and ci[1, 0] == 0.0 and ci[1, 1] > 0.0
    assert np.isnan(ci[3]).all()  # an empty class has no interval
    lo, hi = metrics.worst_class_interval(ok, y, 4)  # Bonferroni over the 3 classes with samples: level 1 - 0.05/3
    assert lo == 0.0 and hi == pytest.approx(P.wilson_interval(0, 100, 1 - 0.05 / 3)[1]) and hi > 0.0370
    # the worst class's interval covers the smaller of two close classes
    ok2 = np.concatenate([np.arange(100) < 30, np.arange(100) < 32])
    lo2, hi2 = metrics.worst_class_interval(ok2, np.repeat([0, 1], 100), 2)
    assert lo2 < 0.30 < hi2 and hi2 < P.wilson_interval(32, 100, 0.975)[1] + 1e-12


def test_one_per_class_function_for_numpy_and_torch():
    acc_t = P.per_class_accuracy(torch.from_numpy(OK), torch.from_numpy(Y), 4)
    assert torch.is_tensor(acc_t) and torch.isnan(acc_t[3])
    np.testing.assert_allclose(acc_t[:3].numpy(), metrics.per_class_accuracy(OK, Y, 3))
    vals = np.arange(10, dtype=float)
    np.testing.assert_allclose(P.per_class_mean(vals, Y, 3), [1.5, 4.5, 7.5])
    assert P.nan_min([np.nan, 0.2, 0.5]) == 0.2 and P.nan_mean([np.nan, 0.2, 0.4]) == pytest.approx(0.3)
    assert P.pct(0.1234) == "12.3" and P.pct(-0.05, sign=True) == "-5.0" and P.pct(None) == "-" and P.pct(np.nan) == "-"


def test_robust_is_within_clean_for_a_model_wrong_on_clean_and_right_on_perturbed():
    """Every clean prediction is wrong, every adversarial one right: nothing is robust (robust <= clean per class).
    Before robust required clean-correctness, this read 0% clean and 100% robust."""
    y = np.repeat([0, 1, 2], 4)
    f = SampleFlags.empty(np.arange(12), y, ["fgsm", "pgd-5"], {"static": {}})
    f.clean_pred[:] = (y + 1) % 3
    f.adv_pred[:] = y[:, None]
    f.ran[:] = True
    f.pert[:] = 0.1
    f.done[:] = True
    settings = {lab: {"name": n, "label": lab, "eps": 0.1, "norm": "linf", "scope": "all"}
                for lab, n in (("fgsm", "fgsm"), ("pgd-5", "pgd"))}
    r = build_result(f, classes=["a", "b", "c"], settings=settings, threat=Threat("linf", 0.1, 5, 0.025), dataset="toy")
    for name in ("fgsm", "pgd-5", "worst_case"):
        assert r["per_class"][name] == [0.0, 0.0, 0.0]
        assert all(a <= c for a, c in zip(r["per_class"][name], r["per_class"]["clean"]))
    wc = f.worst_case(["fgsm", "pgd-5"])
    for lab in ("fgsm", "pgd-5"):  # per sample: worst case <= each attack <= clean
        assert not (wc & ~f.robust(lab)).any() and not (f.robust(lab) & ~f.clean_correct).any()


def test_an_empty_class_is_nan_in_the_result_and_left_out_of_summaries():
    f = _toy_flags()
    settings = {lab: {"name": n, "label": lab, "eps": 0.1, "norm": "linf", "scope": "all"}
                for lab, n in (("fgsm", "fgsm"), ("pgd-5", "pgd"))}
    r = build_result(f, classes=["a", "b", "c"], settings=settings, threat=Threat("linf", 0.1, 5, 0.025), dataset="toy")
    validate_result(r)
    assert r["n_per_class"] == [3, 3, 0] and r["per_class"]["clean"][2] is None
    assert r["summary"]["clean"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["per_class_ci95"]["clean"][2] == [None, None] and "-" in markdown_table(r)


def test_robustbench_block_only_for_standard_autoattack():
    f = _toy_flags()
    base = {"name": "autoattack", "label": "pgd-5", "eps": 0.1, "norm": "linf", "scope": "all", "steps": None,
            "queries": None, "restarts": None, "targets": None, "effective": {"package": "pyautoattack 0.2.0"}}
    settings = {"fgsm": {"name": "fgsm", "label": "fgsm", "eps": 0.1, "norm": "linf", "scope": "all"}}
    thr = Threat("linf", 0.1, 5, 0.025)
    custom = build_result(f, classes=["a", "b"], settings={**settings, "pgd-5": {**base, "version": "custom"}},
                          threat=thr, dataset="toy")["robustbench"]
    assert custom["autoattack_acc"] is None and custom["clean_acc"] == pytest.approx(5 / 6)
    std = build_result(f, classes=["a", "b"], settings={**settings, "pgd-5": {**base, "version": "standard"}},
                       threat=thr, dataset="toy")["robustbench"]
    assert std["autoattack_acc"] == pytest.approx(3 / 6)  # clean-correct and robust: samples 0, 3, 5
    assert (std["autoattack_version"], std["autoattack_scope"], std["autoattack_package"]) == ("standard", "all",
                                                                                               "pyautoattack 0.2.0")
    steps = build_result(f, classes=["a", "b"], settings={**settings, "pgd-5": {**base, "version": "standard", "steps": 5}},
                         threat=thr, dataset="toy")["robustbench"]
    assert steps["autoattack_acc"] is None  # counts overridden: not standard AutoAttack


def test_inventions_are_labelled_in_results_and_listings():
    from rfbench.attacks.registry import ATTACKS
    from rfbench.core.registry import INVENTION_LABEL
    from rfbench.defenses import DEFENSES

    assert INVENTION_LABEL in DEFENSES.describe("class-weights") and INVENTION_LABEL in ATTACKS.describe("temperature-pgd")
    assert DEFENSES.invention_notes("reat", {"rbl": "released"}) == []
    assert len(DEFENSES.invention_notes("reat", {"rbl": "logit-adjusted"})) == 1
    assert INVENTION_LABEL not in DEFENSES.describe("pgd-at")
    f = _toy_flags()
    settings = {"fgsm": {"name": "fgsm", "label": "fgsm", "eps": 0.1, "norm": "linf", "scope": "all"},
                "pgd-5": {"name": "temperature-pgd", "label": "pgd-5", "eps": 0.1, "norm": "linf", "scope": "all",
                          "T": 2.0, "tmode": "confidence"}}
    r = build_result(f, classes=["a", "b"], settings=settings, threat=Threat("linf", 0.1, 5, 0.025), dataset="toy",
                     source={"defense": "class-weights", "train_config": {"defense_args": {}}})
    assert [i["label"] for i in r["inventions"]] == ["pgd-5", "defense class-weights"]
    assert all(i["invention"].startswith(INVENTION_LABEL) for i in r["inventions"])


def test_class_groups():
    assert metrics.class_groups([100] * 10, None) is None
    g = metrics.class_groups([5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100], 50)
    assert g == {"head": [0, 1, 2], "middle": [3, 4, 5, 6], "tail": [7, 8, 9]}
    g100 = metrics.class_groups([500, 150, 101, 100, 50, 20, 19, 5], 100)
    assert g100 == {"many": [0, 1, 2], "medium": [3, 4, 5], "few": [6, 7]}
    assert metrics.group_means(np.array([1.0, 0.5, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6]), g100)["few"] == pytest.approx(0.55)


def test_weight_norms_of_a_linear_head():
    model = create_model("smallcnn", 3, 1, width=0.25)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[0, :2] = torch.tensor([3.0, 4.0])
        model.head.weight[2, 0] = 2.0
    np.testing.assert_allclose(metrics.class_weight_norms(model), [5.0, 0.0, 2.0])
    assert metrics.class_weight_norms(torch.nn.Sequential(torch.nn.Flatten())) is None
    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


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
    r = build_result(f, classes=["a", "b"], settings=settings, threat=Threat("linf", 0.1, 5, 0.025), dataset="toy")
    validate_result(r)
    assert r["schema"] == "rfbench.result/2" and r["n_per_class"] == [3, 3]
    assert r["per_class"]["clean"] == pytest.approx([2 / 3, 1.0])
    assert r["per_class"]["fgsm"] == pytest.approx([1 / 3, 2 / 3])
    assert r["per_class"]["pgd-5"] == pytest.approx([1 / 3, 2 / 3])
    assert r["per_class"]["worst_case"] == pytest.approx([1 / 3, 1 / 3])
    assert r["boundary_error"] == pytest.approx([1 / 3, 2 / 3])
    assert r["summary"]["worst_case"]["worst_class"] == 0 and r["summary"]["clean"]["gap"] == pytest.approx(1 / 3)
    assert r["confusion"]["worst_case"] == [[1, 2], [2, 1]]
    rb = r["robustbench"]  # fractions, like every accuracy of the file
    assert rb["clean_acc"] == pytest.approx(5 / 6) and rb["eps"] == "0.1" and rb["autoattack_acc"] is None
    assert r["checks"]["attack_order"]["pairs"] == ["pgd-5 <= fgsm"]
    assert r["checks"]["robust_le_clean"]["verdict"] == "pass"
    assert r["cfps"]["worst_case"] == pytest.approx([0.5, 0.5])  # errors: 0->1 twice, 1->0 twice
    assert "worst class a" in markdown_table(r)


def test_validate_result_names_the_problem():
    f = _toy_flags()
    settings = {lab: {"name": n, "label": lab, "eps": 0.1, "norm": "linf", "scope": "all"}
                for lab, n in (("fgsm", "fgsm"), ("pgd-5", "pgd"))}
    r = build_result(f, classes=["a", "b"], settings=settings, threat=Threat("linf", 0.1, 5, 0.025), dataset="toy")
    r["per_class"]["pgd-5"] = [0.5]
    with pytest.raises(ValueError, match="per_class"):
        validate_result(r)
