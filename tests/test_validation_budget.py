"""A quick run (``--max-train-samples``) holds out a validation split scaled to its budget, not the full set's."""

from __future__ import annotations

import pytest

from rfbench.benchmark.data.registry import validation_size
from rfbench.benchmark.runner.cost import dataset_sizes
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.trainer import load_bundle


def test_validation_size_rule():
    full = [6000] * 10
    assert validation_size(full, 0.02, 20) == 120                 # the protocol's 2% of each class
    assert validation_size(full, 0.02, 20, None) == 120
    assert validation_size(full, 0.02, 20, 60000) == 120          # a budget of the whole set changes nothing
    assert validation_size(full, 0.02, 20, 1000) == 20            # 2% of 100 is 2: the floor of 20 holds
    assert validation_size(full, 0.02, 5, 30000) == 60            # 2% of 3,000
    assert validation_size([5000] * 10, 0.02, 20, 10 ** 6) == 100  # a budget above the set: no change


@pytest.mark.parametrize("budget, val_per_class, expected_val", [(1000, None, 200), (None, None, 1200), (1000, 50, 500)])
def test_load_bundle_scales_only_the_default(fmnist, budget, val_per_class, expected_val):
    cfg = TrainConfig(dataset="fashion-mnist", max_train_samples=budget, val_per_class=val_per_class)
    bundle = load_bundle(cfg)
    assert len(bundle.val) == expected_val
    if budget:
        assert len(bundle.train) == budget
    assert dataset_sizes("fashion-mnist", None, budget, val_per_class)["val"] == expected_val
