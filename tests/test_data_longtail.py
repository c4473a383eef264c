"""The long-tailed split generator and the balanced validation split (docs/protocol.md).

The per-class counts are the ones listed in ``docs/protocol.md``; the selected
indices are checked against an independent re-implementation that uses the
*global* NumPy RNG exactly as the spec states (``np.random.seed(0)`` then
``np.random.shuffle`` per class), on label arrays laid out like a real
dataset (classes interleaved in a shuffled order) and on the real
Fashion-MNIST labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from rfbench.benchmark.data import balanced_validation, load_dataset, longtail_counts, longtail_indices
from rfbench.benchmark.data.registry import load_raw, validation_size
from rfbench.core.errors import ConfigError, DataNotFoundError

# docs/protocol.md, "Long-tailed split generator": exact counts
CIFAR10_LT = {
    10: [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500],
    50: [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100],
    100: [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],
}
CIFAR10_LT_TOTALS = {10: 20431, 50: 13996, 100: 12406}
CIFAR100_LT_TOTALS = {10: 19573, 100: 10847}
CIFAR100_LT_HEAD = {10: [500, 488, 477, 466, 455], 100: [500, 477, 455]}
CIFAR100_LT_TAIL = {10: [53, 52, 51, 50], 100: [5, 5, 5]}
# Fashion-MNIST-LT, rho = 50, 6000 images per class: int(6000 * 0.02 ** (i / 9)), worked out by hand
FASHION_LT50 = [6000, 3884, 2515, 1628, 1054, 682, 442, 286, 185, 120]


def shuffled_labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """A balanced label array whose classes are interleaved, as in a real training set's order."""
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(num_classes), per_class))


@pytest.fixture
def global_numpy_rng():
    """Let a test use NumPy's global RNG, and put its state back afterwards."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


def spec_generator(labels: np.ndarray, rho: float) -> np.ndarray:
    """docs/protocol.md's generator, written out literally with the global RNG."""
    num_classes = int(labels.max()) + 1
    img_max = len(labels) / num_classes
    counts = [int(img_max * (1.0 / rho) ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    np.random.seed(0)
    picks = []
    for c in range(num_classes):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        picks.append(idx[: counts[c]])
    return np.concatenate(picks)


@pytest.fixture(scope="module")
def cifar10_labels() -> np.ndarray:
    return shuffled_labels(10, 5000, seed=2024)


@pytest.fixture(scope="module")
def cifar100_labels() -> np.ndarray:
    return shuffled_labels(100, 500, seed=2025)


@pytest.fixture(scope="module")
def fashion_raw():
    return load_raw("fashion-mnist")


@pytest.mark.parametrize("rho", [10, 50, 100])
def test_cifar10_lt_counts(rho, cifar10_labels):
    assert longtail_counts(5000, 10, rho) == CIFAR10_LT[rho]
    selected, counts = longtail_indices(cifar10_labels, 10, rho)
    assert counts == CIFAR10_LT[rho]
    assert np.bincount(cifar10_labels[selected], minlength=10).tolist() == CIFAR10_LT[rho]
    assert len(selected) == CIFAR10_LT_TOTALS[rho] == len(np.unique(selected))


@pytest.mark.parametrize("rho", [10, 100])
def test_cifar100_lt_counts(rho, cifar100_labels):
    selected, counts = longtail_indices(cifar100_labels, 100, rho)
    assert sum(counts) == len(selected) == CIFAR100_LT_TOTALS[rho]
    head, tail = CIFAR100_LT_HEAD[rho], CIFAR100_LT_TAIL[rho]
    assert counts[: len(head)] == head
    assert counts[-len(tail):] == tail
    assert np.bincount(cifar100_labels[selected], minlength=100).tolist() == counts


@pytest.mark.parametrize("rho", [10, 50, 100])
def test_cifar10_lt_indices_match_global_rng_spec(rho, cifar10_labels, global_numpy_rng):
    selected, _ = longtail_indices(cifar10_labels, 10, rho)
    np.testing.assert_array_equal(selected, spec_generator(cifar10_labels, rho))


def test_cifar100_lt_indices_match_global_rng_spec(cifar100_labels, global_numpy_rng):
    selected, _ = longtail_indices(cifar100_labels, 100, 100)
    np.testing.assert_array_equal(selected, spec_generator(cifar100_labels, 100))


def test_generator_leaves_global_rng_alone(cifar10_labels, global_numpy_rng):
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    longtail_indices(cifar10_labels, 10, 50)
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_counts_reject_bad_ratio():
    with pytest.raises(ValueError):
        longtail_counts(5000, 10, 0.5)
    with pytest.raises(ConfigError):
        load_dataset("fashion-mnist", imbalance_ratio=0.5)


def test_fashion_mnist_lt_real_data(fashion_raw, global_numpy_rng):
    labels = fashion_raw.train.y.numpy()
    assert longtail_counts(6000, 10, 50) == FASHION_LT50
    assert [int(6000 * 0.02 ** (i / 9)) for i in range(10)] == FASHION_LT50
    selected, counts = longtail_indices(labels, 10, 50)
    assert counts == FASHION_LT50
    np.testing.assert_array_equal(selected, spec_generator(labels, 50))

    shared = load_dataset("fashion-mnist-lt", imbalance_ratio=50, val_borrow="share")
    assert shared.name == "fashion-mnist-lt" and shared.imbalance_ratio == 50
    np.testing.assert_array_equal(shared.train.index.numpy(), np.sort(selected))  # exactly the reference subset
    assert shared.train_counts == FASHION_LT50
    assert (shared.train.x.numpy() == fashion_raw.train.x.numpy()[np.sort(selected)]).all()
    assert (shared.test.y == fashion_raw.test.y).all()  # the full balanced test set


def test_lt_suffix_defaults_to_rho_50(fashion_raw):
    bundle = load_dataset("fashion-mnist-lt")
    assert bundle.imbalance_ratio == 50
    head_val = 120  # 2% of 6000, taken out of the head's own images (val_borrow="remove")
    assert bundle.train_counts == [FASHION_LT50[0] - head_val] + FASHION_LT50[1:]


def test_fashion_balanced_validation(fashion_raw):
    bundle = load_dataset("fashion-mnist")
    assert bundle.imbalance_ratio is None
    assert bundle.val.counts() == [120] * 10  # 2% of 6000
    assert bundle.train_counts == [5880] * 10
    tr, va = set(bundle.train.index.tolist()), set(bundle.val.index.tolist())
    assert not tr & va and len(tr | va) == 60000
    assert (bundle.val.y == fashion_raw.train.y[bundle.val.index]).all()
    other_seed = load_dataset("fashion-mnist", seed=1)
    assert set(other_seed.val.index.tolist()) != va


def test_validation_size_rule():
    assert validation_size([6000] * 10, 0.02, 20) == 120  # 2% of each class
    assert validation_size([500] * 100, 0.02, 20) == 20  # 2% would be 10: at least 20
    assert validation_size([5000, 50], 0.02, 20) == 100  # long-tailed: 2% of the full class size


@pytest.mark.parametrize("borrow", ["remove", "share"])
def test_lt_validation_comes_from_left_out_images(borrow, cifar10_labels):
    labels = cifar10_labels
    selected, _ = longtail_indices(labels, 10, 100)
    train, val, notes = balanced_validation(labels, selected, 10, per_class=100, seed=0, borrow=borrow)
    assert np.bincount(labels[val], minlength=10).tolist() == [100] * 10
    in_selected = np.isin(val, selected)
    # classes 1..9 have images the generator left out: validation uses only those
    assert not in_selected[labels[val] != 0].any()
    # the head kept all of its images, so its validation images are its own selected ones
    assert in_selected[labels[val] == 0].all()
    assert len(notes) == 1 and notes[0].startswith("class 0: 100 of 100")
    if borrow == "share":
        np.testing.assert_array_equal(train, selected)  # training subset is exactly the reference subset
        assert "both splits" in notes[0]
    else:
        np.testing.assert_array_equal(train, selected[~np.isin(selected, val)])
        assert len(train) == len(selected) - 100 and not np.isin(val, train).any()
        assert "removed from training" in notes[0]


def test_partial_borrowing_when_few_images_are_left(cifar100_labels):
    """CIFAR-100-LT rho=10: class 1 keeps 488 of 500 images, so only 12 are left for its 20 validation images."""
    labels = cifar100_labels
    selected, counts = longtail_indices(labels, 100, 10)
    train, val, notes = balanced_validation(labels, selected, 100, per_class=20, seed=0)
    assert counts[1] == 488
    val1 = val[labels[val] == 1]
    assert len(val1) == 20 and (~np.isin(val1, selected)).sum() == 12
    assert any(n.startswith("class 1: 8 of 20") for n in notes)
    assert np.bincount(labels[train], minlength=100)[1] == 488 - 8
    assert not np.isin(val, train).any()


def test_val_borrow_is_validated_and_exposed(cifar10_labels):
    with pytest.raises(ConfigError, match="val_borrow"):
        load_dataset("fashion-mnist-lt", val_borrow="keep")
    with pytest.raises(ConfigError, match="val_borrow"):
        balanced_validation(cifar10_labels, np.arange(10), 10, 5, borrow="keep")


def test_too_small_class_is_a_clear_error():
    labels = np.array([0] * 30 + [1] * 5)
    with pytest.raises(ConfigError, match="class 1 has 5 training images"):
        balanced_validation(labels, np.arange(len(labels)), 2, per_class=5)


def test_eval_only_dataset_refuses_long_tail(tmp_path):
    from PIL import Image

    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "a" / "0.png")
    with pytest.raises(DataNotFoundError, match="evaluation-only"):
        load_dataset(f"imagenet:{tmp_path}", imbalance_ratio=10)
