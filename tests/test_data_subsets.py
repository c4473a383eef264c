"""Deterministic class-aware subsets (``per_class_subset``, ``stratified_subset``)."""

from __future__ import annotations

import torch

from rfbench.benchmark.data import ArrayDataset, per_class_subset, stratified_subset


def long_tailed(counts=(50, 20, 5)) -> ArrayDataset:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(sum(counts), generator=torch.Generator().manual_seed(0))]
    x = torch.arange(len(y), dtype=torch.uint8).reshape(-1, 1, 1, 1)
    return ArrayDataset(x, y, ["a", "b", "c"])


def test_per_class_subset_caps_each_class_and_keeps_positions():
    ds = long_tailed()
    sub = per_class_subset(ds, 10, seed=1)
    assert sub.counts() == [10, 10, 5]  # a smaller class keeps all it has
    assert torch.equal(sub.index, sub.index.sort().values)
    assert torch.equal(sub.y, ds.y[sub.index]) and torch.equal(sub.x, ds.x[sub.index])
    assert torch.equal(per_class_subset(ds, 10, seed=1).index, sub.index)
    assert not torch.equal(per_class_subset(ds, 10, seed=2).index, sub.index)


def test_stratified_subset_keeps_shares():
    ds = long_tailed()
    sub = stratified_subset(ds, 30, seed=0)
    assert sub.counts() == [50 * 30 // 75, 20 * 30 // 75, 5 * 30 // 75]  # floor(n * n_c / N): 20, 8, 2
    assert stratified_subset(ds, 1, seed=0).counts() == [1, 1, 1]  # at least one per class
    assert stratified_subset(ds, 1000) is ds
