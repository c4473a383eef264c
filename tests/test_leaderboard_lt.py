"""The long-tailed CPU track ranks on a metric that separates its entries: the tail classes' mean robust accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rfbench.benchmark.leaderboard import load_track
from rfbench.benchmark.leaderboard.board import collect, primary_text
from rfbench.benchmark.leaderboard.ranking import metric_value

REPO = Path(__file__).resolve().parents[1]
LT = REPO / "leaderboards" / "fashion-mnist-lt50-linf" / "track.yaml"


def test_the_tail_metric_by_hand():
    acc = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.4, 0.6, 0.8]])
    assert np.allclose(metric_value(acc, "tail", [2, 3]), [0.4, 0.7])
    assert np.allclose(metric_value(acc, "worst"), [0.1, 0.2])


def test_the_long_tailed_track_ranks_on_its_tail_classes_and_says_why():
    track = load_track(LT)
    assert track.info.primary_metric == "tail" and track.info.tail_classes == [7, 8, 9]
    board = collect(track, REPO)
    rows = board.ranking.ranked if board.ranking else []
    assert len(rows) >= 20
    tails = np.array([r.tail for r in rows])
    for r in rows:  # the tail value is the mean of the entry's worst-case vector over classes 7-9
        wc = r.entry.evaluation("best").per_class["worst_case"]
        assert r.tail == np.mean(wc[7:10])
    assert (tails == 0).mean() <= 0.2  # at most 20% of the entries at 0 on the primary metric
    assert ([r.worst for r in rows].count(0.0) / len(rows)) > 0.8  # the worst class would not separate them
    assert len({r.ranks["tail"] for r in rows}) >= 5  # it separates entries into rank groups
    assert [r.ranks["tail"] for r in rows] == sorted(r.ranks["tail"] for r in rows)  # the table sorts by it first
    text = primary_text(board)
    assert "tail classes (Sneaker, Bag, Ankle boot)" in text and "Why:" in text
    assert text in (LT.parent / "README.md").read_text().replace("\n", " ")


def test_the_balanced_track_keeps_the_worst_class_first():
    board = collect(load_track(REPO / "leaderboards" / "fashion-mnist-linf" / "track.yaml"), REPO)
    assert primary_text(board) == "" and board.ranking is not None
    assert all("tail" not in r.ranks and r.tail is None for r in board.ranking.ranked)
