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
from rfbench.benchmark.errors import DataNotFoundError

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
