"""Rank groups, identical entries and the worst class's interval (benchmark/leaderboard/ranking.py), by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_runs import REPO

from rfbench.benchmark.leaderboard.ranking import (
    Z95,
    EntryData,
    bootstrap_class_accuracies,
    duplicates,
    metric_value,
    pooled_seed_variance,
    rank,
    rank_groups,
    significantly_better,
)
from rfbench.core.perclass import wilson_interval, worst_class_interval_from_counts


def test_wilson_interval_by_hand_and_against_scipy():
    # k = 0: the lower end is 0 and the upper end is z^2 / (n + z^2)
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and hi == pytest.approx(Z95 ** 2 / (100 + Z95 ** 2))
    # k = n mirrors k = 0
    assert wilson_interval(100, 100) == pytest.approx((1 - hi, 1.0))
    from scipy.stats import binomtest

    for k, n in [(4, 100), (1, 100), (37, 50), (250, 500)]:
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_rank_is_one_plus_the_entries_significantly_better():
    # 0 beats 2 and 3; 1 beats 3; nothing beats 0 or 1
    better = np.zeros((4, 4), dtype=bool)
    better[0, 2] = better[0, 3] = better[1, 3] = True
    assert rank_groups(better) == [1, 1, 2, 3]


def test_significance_combines_the_paired_bootstrap_and_the_seed_spread():
    values = np.array([0.5, 0.4, 0.1])
    shared = np.random.default_rng(0).normal(0, 0.05, size=1000)
    boot = values[:, None] + shared[None, :]  # the resamples move all entries together: v_test = 0
    # seed sd 0.05: threshold 1.96 * sqrt(2 * 0.0025) = 0.1386; 0.1 is inside, 0.3 and 0.4 are not
    better = significantly_better(values, boot, seed_var=0.05 ** 2)
    assert better.tolist() == [[False, False, True], [False, False, True], [False, False, False]]
    assert rank_groups(better) == [1, 1, 3]
    # without seed noise and without test noise every difference counts
    assert rank_groups(significantly_better(values, boot, seed_var=0.0)) == [1, 2, 3]
    # unpaired noise of sd 0.1 per entry: v_test ~ 0.02, threshold ~ 0.277: only 0.4 (and 0.3) stand out
    noisy = values[:, None] + np.random.default_rng(1).normal(0, 0.1, size=(3, 20000))
    thr = Z95 * math.sqrt(2 * 0.01)
    assert 0.3 > thr and 0.1 < thr
    assert rank_groups(significantly_better(values, noisy, seed_var=0.0)) == [1, 1, 3]


def test_pooled_seed_variance_by_hand():
    values = {"a0": 0.1, "a1": 0.3, "b0": 0.2, "b1": 0.2, "b2": 0.5, "c0": 0.9}
    setting = {"a0": ("a",), "a1": ("a",), "b0": ("b",), "b1": ("b",), "b2": ("b",), "c0": ("c",)}
    # a: variance 0.02 (1 dof); b: mean 0.3, variance (0.01 + 0.01 + 0.04) / 2 = 0.03 (2 dof); c: one seed, ignored
    assert pooled_seed_variance(values, setting) == pytest.approx((0.02 + 2 * 0.03) / 3)
    assert pooled_seed_variance({"c0": 0.9}, {"c0": ("c",)}) == 0.0


def test_metrics_worst_and_worst_20_percent():
    acc = np.array([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4, 0.0]])
    assert metric_value(acc, "worst").tolist() == [0.0]
    assert metric_value(acc, "tail20")[0] == pytest.approx(0.05)  # the worst 2 of 10 classes: 0.0 and 0.1


def _data(eid, robust_per_class, defense=None, submitted="2026-01-01", signature=None, flags=True):
    """An EntryData with N = 100 images per class in C classes; robust_per_class: list of robust flag arrays."""
    C = len(robust_per_class)
    y = np.repeat(np.arange(C), 100)
    robust = np.concatenate([np.asarray(r, dtype=bool) for r in robust_per_class])
    per_class = np.array([np.mean(r) for r in robust_per_class])
    k = int(np.argmin(per_class))
    tail = float(metric_value(per_class[None], "tail20")[0])
    summary = {"worst_case": {"worst": float(per_class.min()), "worst_class": k, "tail20": tail,
                              "mean": float(per_class.mean())}}
    entry = SimpleNamespace(id=eid, submitted=submitted, classes=[f"c{i}" for i in range(C)],
                            defense=SimpleNamespace(name=defense or eid.rsplit("-s", 1)[0], args={}),
                            evaluation=lambda ck, s=summary: SimpleNamespace(summary=s))
    return EntryData(entry=entry, n_per_class=[100] * C, per_class=per_class,
                     index=np.arange(100 * C) if flags else None, y=y if flags else None,
                     robust=robust if flags else None, signature=signature or f"sig-{eid}")


def _flags(n_true):
    return np.arange(100) < n_true


def test_paired_bootstrap_variance_matches_the_paired_formula():
    """One class of 100 images: Var*(a - b) = Var(a_i - b_i) / n for the paired draw; far above for unpaired ones."""
    a = _flags(60)
    b = np.roll(_flags(55), 3)  # mostly the same images: 52 shared, 8 only in a, 3 only in b
    d = a.astype(float) - b.astype(float)
    A, B = _data("a-s0", [a]), _data("b-s0", [b])
    boot = bootstrap_class_accuracies([A, B], n_boot=20000, seed=0)[:, :, 0]
    assert np.var(boot[0] - boot[1]) == pytest.approx(d.var() / 100, rel=0.05)
    unpaired = bootstrap_class_accuracies([A, _data("b-s0", [b], flags=False)], n_boot=20000, seed=0)[:, :, 0]
    expected = (0.6 * 0.4 + 0.55 * 0.45) / 100
    assert np.var(unpaired[0] - unpaired[1]) == pytest.approx(expected, rel=0.05)
    assert expected > 3 * d.var() / 100


def test_duplicates_keep_the_first_added_then_the_baseline_then_the_most_seeded():
    same = "sig-same"
    d = [_data("cb-at-s0", [_flags(5)], signature=same), _data("pgd-at-s0", [_flags(5)], signature=same),
         _data("pgd-at-s1", [_flags(6)]), _data("zeta-s0", [_flags(5)], signature=same)]
    assert duplicates(d, baselines=("standard", "pgd-at", "trades")) == {"cb-at-s0": "pgd-at-s0", "zeta-s0": "pgd-at-s0"}
    # no baseline among them: the defense with more entries (pgd-at has two) still wins
    assert duplicates(d, baselines=()) == {"cb-at-s0": "pgd-at-s0", "zeta-s0": "pgd-at-s0"}
    # who was first comes from the repository's history (the order given), never from the entry's `submitted`
    e = [_data("b-s0", [_flags(5)], signature=same, submitted="2026-02-01"),
         _data("a-s0", [_flags(5)], signature=same, submitted="2000-01-01")]
    assert duplicates(e, order={"b-s0": 0, "a-s0": 1}) == {"a-s0": "b-s0"}  # added first: the reference
    assert duplicates(e, order={"b-s0": 0}) == {"a-s0": "b-s0"}  # not yet committed: after every committed entry
    assert duplicates(d, baselines=("pgd-at",), order={"zeta-s0": 0, "pgd-at-s0": 1}) == {
        "cb-at-s0": "zeta-s0", "pgd-at-s0": "zeta-s0"}  # first beats being a baseline
    assert duplicates(e) == {"b-s0": "a-s0"}  # no history: the smaller id, whatever `submitted` says


def test_rank_end_to_end_by_hand():
    """Two classes of 100 images; worst class: A 50, B = A (identical), C 10, D 11 (C's images + one): ranks 1, -, 2, 2."""
    strong, weak = _flags(90), _flags(50)
    entries = {
        "pgd-at-s0": _data("pgd-at-s0", [strong, weak], signature="A"),
        "copy-s0": _data("copy-s0", [strong, weak], signature="A"),
        "c-s0": _data("c-s0", [strong, _flags(10)]),
        "d-s0": _data("d-s0", [strong, _flags(11)]),
    }
    r = rank([d.entry for d in entries.values()], "best", REPO, baselines=("pgd-at",), n_boot=2000,
             loader=lambda e, ck, root: entries[e.id])
    assert [x.entry.id for x in r.ranked] == ["pgd-at-s0", "d-s0", "c-s0"]
    assert [x.ranks["worst"] for x in r.ranked] == [1, 2, 2]
    assert [x.ranks["tail20"] for x in r.ranked] == [1, 2, 2]  # 2 classes: the worst 20% is the worst class
    assert [(x.entry.id, x.identical_to) for x in r.identical] == [("copy-s0", "pgd-at-s0")]
    # the worst-class interval covers min_k p_k: Bonferroni-adjusted (level 1 - 0.05/2) Wilson intervals of both
    # classes (90/100 and 10/100), minimum of the ends; by hand it is wider than class 1's plain 95% interval
    lo90, hi90 = wilson_interval(90, 100, 0.975)
    lo10, hi10 = wilson_interval(10, 100, 0.975)
    assert r.row("c-s0").worst_ci == pytest.approx((min(lo90, lo10), min(hi90, hi10)))
    assert r.row("c-s0").worst_ci == pytest.approx(worst_class_interval_from_counts([90, 10], [100, 100]))
    plain = wilson_interval(10, 100)
    assert r.row("c-s0").worst_ci[0] < plain[0] and r.row("c-s0").worst_ci[1] > plain[1]
    assert r.seed_sd == {"worst": 0.0, "tail20": 0.0} and r.seed_settings == []
    # a second seed of C that lands at 50: the seed spread (sd 28 points) swallows every difference
    entries["c-s1"] = _data("c-s1", [strong, weak], signature="C1")
    r = rank([d.entry for d in entries.values()], "best", REPO, baselines=("pgd-at",), n_boot=2000,
             loader=lambda e, ck, root: entries[e.id])
    assert r.seed_settings == ["c"] and r.seed_sd["worst"] == pytest.approx(math.sqrt(0.08))
    assert {x.ranks["worst"] for x in r.ranked} == {1}


def test_committed_boards_rank_groups_and_identical_entries(tmp_path):
    """The archived version-1 CPU boards (36 entries with known twins): no two ranked entries share their
    predictions, each unranked one shares its reference's, and equal worst-class values share a rank group."""
    import shutil

    from archived_board import restore_v1

    from rfbench.benchmark.leaderboard.board import collect
    from rfbench.benchmark.leaderboard.ranking import entry_data
    from rfbench.benchmark.leaderboard.schema import find_track

    root = tmp_path / "fork"
    shutil.copytree(REPO / "leaderboards", root / "leaderboards")
    restore_v1(root)
    for track_id in ("fashion-mnist-linf", "fashion-mnist-lt50-linf"):
        board = collect(find_track(track_id, root), root)
        ck = board.track.info.protocol.checkpoint
        assert board.ranking.identical  # the archive holds known twins (cb-at and class-weights equal pgd-at)
        sig = {r.entry.id: entry_data(r.entry, ck, root).signature for r in board.ranking.ranked + board.ranking.identical}
        ranked = [sig[r.entry.id] for r in board.ranking.ranked]
        assert len(set(ranked)) == len(ranked)
        for r in board.ranking.identical:
            assert sig[r.entry.id] == sig[r.identical_to] and r.identical_to in {x.entry.id for x in board.ranking.ranked}
            assert not r.ranks
        groups = {}
        for r in board.ranking.ranked:
            groups.setdefault(round(r.worst, 9), set()).add(r.ranks["worst"])
        assert all(len(v) == 1 for v in groups.values()), groups
