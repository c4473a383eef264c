"""Batch augmentation (random crop with padding, horizontal flip) and the batch iterator.

The crop is checked against torchvision's own functional ops applied one
image at a time (``pad`` with zeros, then ``crop`` at the same offsets), which
is what ``RandomCrop(size, padding)`` does per sample.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from rfbench.benchmark.data import ArrayDataset, AugmentConfig, augment_batch, iterate_batches
from rfbench.benchmark.data.augment import random_crop, random_flip
from rfbench.core.errors import DataNotFoundError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def batch(b=16, c=3, h=12, w=10, seed=0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def drawn_offsets(seed: int, b: int, padding: int) -> tuple[list[int], list[int]]:
    """The (top, left) offsets random_crop draws from a generator seeded with ``seed``: rows first, then columns."""
    g = torch.Generator().manual_seed(seed)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    return dy.tolist(), dx.tolist()


@pytest.mark.parametrize("padding", [1, 4])
def test_random_crop_equals_per_image_pad_and_crop(padding):
    x = batch()
    b, _, h, w = x.shape
    out = random_crop(x, padding, torch.Generator().manual_seed(7))
    dy, dx = drawn_offsets(7, b, padding)
    for i in range(b):
        ref = TF.crop(TF.pad(x[i], [padding], fill=0), dy[i], dx[i], h, w)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=0)
        # and by hand: slice the zero-padded image
        padded = torch.zeros(3, h + 2 * padding, w + 2 * padding)
        padded[:, padding : padding + h, padding : padding + w] = x[i]
        torch.testing.assert_close(out[i], padded[:, dy[i] : dy[i] + h, dx[i] : dx[i] + w], rtol=0, atol=0)


def test_random_crop_reaches_every_offset():
    """Every output is one of the (2p+1)^2 zero-padded crops, and every one of them occurs."""
    padding, size = 4, 8
    x = (torch.arange(size * size, dtype=torch.float32) + 1).reshape(1, 1, size, size)  # distinct, non-zero pixels
    out = random_crop(x.expand(3000, 1, size, size), padding, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x[0, 0], (padding,) * 4)
    n = 2 * padding + 1
    candidates = torch.stack([padded[i : i + size, j : j + size] for i in range(n) for j in range(n)])
    match = (out[:, 0, None] == candidates[None]).flatten(2).all(dim=2)  # (3000, 81)
    assert (match.sum(dim=1) == 1).all()
    assert set(match.float().argmax(dim=1).tolist()) == set(range(n * n))


def test_zero_padding_is_identity():
    x = batch()
    assert random_crop(x, 0) is x
    assert not AugmentConfig().enabled
    assert augment_batch(x, AugmentConfig()) is x


def test_random_flip_flips_about_half_exactly():
    x = batch(b=400)
    out = random_flip(x, torch.Generator().manual_seed(3))
    flipped = torch.tensor([torch.equal(out[i], TF.hflip(x[i])) for i in range(len(x))])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(len(x))])
    assert (flipped | kept).all() and not (flipped & kept).any()
    assert 150 < int(flipped.sum()) < 250
    # which images flip is the generator's draw, in order
    mask = torch.rand(400, generator=torch.Generator().manual_seed(3)) < 0.5
    assert torch.equal(flipped, mask)


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_dtypes_and_device(device):
    x = batch().to(device)
    out = augment_batch(x, AugmentConfig(crop_padding=4, flip=True), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1


def test_seeded_generator_is_deterministic():
    x, cfg = batch(), AugmentConfig(crop_padding=4, flip=True)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(5))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(5))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_same_result_on_every_device():
    x, cfg = batch(), AugmentConfig(crop_padding=4, flip=True)
    cpu = augment_batch(x, cfg, torch.Generator().manual_seed(9))
    gpu = augment_batch(x.cuda(), cfg, torch.Generator().manual_seed(9))
    assert torch.equal(cpu, gpu.cpu())


def test_device_independence_of_randomness():
    """The draws come from the CPU generator, never from the batch's device RNG."""
    x, cfg = batch(), AugmentConfig(crop_padding=2, flip=True)
    torch.manual_seed(0)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    torch.manual_seed(99)  # the global (and device) RNG state must not matter
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def tiny_dataset(n=10) -> ArrayDataset:
    x = torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2)
    return ArrayDataset(x, torch.arange(n) % 3, ["a", "b", "c"])


def test_iterate_batches_order_values_and_positions():
    ds = tiny_dataset()
    got = list(iterate_batches(ds, 4))
    assert [len(y) for _, y, _ in got] == [4, 4, 2]
    x0, y0, pos0 = got[0]
    assert x0.dtype == torch.float32 and torch.equal(x0, ds.x[:4].float() / 255)
    assert torch.equal(pos0, torch.arange(4)) and torch.equal(y0, ds.y[:4])
    assert [len(y) for _, y, _ in iterate_batches(ds, 4, drop_last=True)] == [4, 4]


def test_iterate_batches_shuffle_is_seeded_and_covers_everything():
    ds = tiny_dataset()
    run = lambda s: torch.cat([p for _, _, p in iterate_batches(ds, 3, shuffle=True, generator=torch.Generator().manual_seed(s))])
    a, b = run(0), run(0)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(10)) and not torch.equal(a, torch.arange(10))
    for x, y, pos in iterate_batches(ds, 3, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(y, ds.y[pos]) and torch.equal(x, ds.x[pos].float() / 255)


def test_iterate_batches_unavailable_split_raises():
    ds = ArrayDataset.missing(["a"], (3, 4, 4), "PATH/train does not exist, so imagenet:PATH is evaluation-only")
    assert len(ds) == 0 and ds.counts() == [0]
    with pytest.raises(DataNotFoundError, match="evaluation-only"):
        next(iterate_batches(ds, 4))


# -- RandAugment / AutoAugment (AT-BSL's augmentation) -------------------------------------------------------

def _uint8_batch(n=16, c=3, seed=0):
    return torch.randint(0, 256, (n, c, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_policy_matches_torchvision_seeded_from_our_generator_and_leaves_the_global_rng(policy):
    from torchvision.transforms import v2

    from rfbench.benchmark.data.augment import apply_policy
    x = _uint8_batch()
    cfg = AugmentConfig(policy=policy, num_ops=2, magnitude=8)
    state = torch.get_rng_state()
    out = apply_policy(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    assert out.dtype == torch.uint8 and out.shape == x.shape
    # independent reference: torchvision's own transform, global RNG seeded with the number our generator gives
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(3)))
    t = v2.RandAugment(2, 8) if policy == "randaugment" else v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = torch.stack([t(img) for img in x])
    assert torch.equal(out, ref)
    assert not torch.equal(out, x)
    assert torch.equal(apply_policy(x, cfg, torch.Generator().manual_seed(3)), out)
    assert not torch.equal(apply_policy(x, cfg, torch.Generator().manual_seed(4)), out)


def test_policy_draws_per_sample():
    from rfbench.benchmark.data.augment import apply_policy
    x = _uint8_batch(1).expand(32, -1, -1, -1).contiguous()  # one image, 32 times
    out = apply_policy(x, AugmentConfig(policy="randaugment", num_ops=2, magnitude=8), torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten()[:64].tolist()) for o in out}
    assert len(distinct) > 8  # a batch-level draw would give one result


def test_policy_in_iterate_batches_resumes_bit_identically():
    ds = ArrayDataset(_uint8_batch(40, seed=1), torch.arange(40) % 4, ["a", "b", "c", "d"])
    cfg = AugmentConfig(crop_padding=4, flip=True, policy="randaugment", num_ops=2, magnitude=8)
    g = torch.Generator().manual_seed(7)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    full = [b[0] for b in iterate_batches(ds, 8, generator=g, augment=cfg, order=order)]
    g2 = torch.Generator().manual_seed(7)
    it = iterate_batches(ds, 8, generator=g2, augment=cfg, order=order)
    first = [next(it)[0] for _ in range(2)]
    saved = g2.get_state()  # what a mid-epoch checkpoint stores
    g3 = torch.Generator()
    g3.set_state(saved)
    rest = [b[0] for b in iterate_batches(ds, 8, generator=g3, augment=cfg, order=order[16:])]
    for a, b in zip(full, first + rest):
        assert torch.equal(a, b)
    plain = [b[0] for b in iterate_batches(ds, 8, generator=torch.Generator().manual_seed(7),
                                           augment=AugmentConfig(crop_padding=4, flip=True), order=order)]
    assert not torch.equal(full[0], plain[0])


def test_policy_refuses_float_images():
    from rfbench.benchmark.data.augment import apply_policy
    with pytest.raises(TypeError, match="uint8"):
        apply_policy(torch.rand(2, 3, 8, 8), AugmentConfig(policy="autoaugment"))


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_grouped_policy_equals_torchvision_per_image_on_grayscale_and_odd_sizes(policy):
    from torchvision.transforms import v2

    from rfbench.benchmark.data.augment import apply_policy
    x = torch.randint(0, 256, (48, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    cfg = AugmentConfig(policy=policy, num_ops=3, magnitude=30, autoaugment_policy="svhn")
    out = apply_policy(x, cfg, torch.Generator().manual_seed(11))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(11)))
    t = v2.RandAugment(3, 30) if policy == "randaugment" else v2.AutoAugment(v2.AutoAugmentPolicy.SVHN)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = torch.stack([t(img) for img in x])
    assert torch.equal(out, ref)
