"""Deterministic class-aware subsets (for quick runs and for ``--n-per-class`` evaluation)."""

from __future__ import annotations

import torch

from rfbench.benchmark.data.base import ArrayDataset


def per_class_subset(ds: ArrayDataset, n_per_class: int, seed: int = 0) -> ArrayDataset:
    """The first ``n_per_class`` samples of every class in a seeded permutation (all of a smaller class).

    The result is sorted by position, so it is the same for every run with the same seed.
    """
    return ds.subset(per_class_indices(ds.y, ds.num_classes, n_per_class, seed))


def per_class_indices(y: torch.Tensor, num_classes: int, n_per_class: int, seed: int = 0) -> torch.Tensor:
    """The sorted positions :func:`per_class_subset` keeps, from the labels ``y`` alone (a leaderboard check uses it)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    yp = torch.as_tensor(y).cpu()[perm]
    keep = [perm[yp == c][:n_per_class] for c in range(num_classes)]
    return torch.cat(keep).sort().values


def stratified_subset(ds: ArrayDataset, n: int, seed: int = 0) -> ArrayDataset:
    """About ``n`` samples keeping every class's share (``floor(n·n_c/N)``, at least 1 per class)."""
    if n >= len(ds):
        return ds
    counts = ds.counts()
    total = sum(counts)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds), generator=g)
    y = ds.y.cpu()[perm]
    keep = []
    for c, n_c in enumerate(counts):
        k = max(1, (n * n_c) // total) if n_c else 0
        keep.append(perm[y == c][:k])
    return ds.subset(torch.cat(keep).sort().values)
