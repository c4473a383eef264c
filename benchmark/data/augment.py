"""Batch augmentation in plain torch, on the batch's device.

Random crop with zero padding and horizontal flip, applied to a whole batch at
once (as airbench does) instead of per sample in Python.  Randomness comes
from a CPU ``torch.Generator`` so that a seeded run is reproducible on any
device.

Optionally an augmentation *policy* runs first, on the uint8 images:
RandAugment (Cubuk et al., CVPR-W 2020) or AutoAugment (Cubuk et al., CVPR
2019), through ``torchvision.transforms.v2`` and applied per sample (each image
draws its own operations), on the batch's device.  This is the augmentation of
AT-BSL (Yue et al., CVPR 2024), whose released training applies
``RandAugment(2, 8)`` or ``AutoAugment(CIFAR10)`` before the crop and flip.
torchvision draws from the global CPU RNG; :func:`apply_policy` draws one seed
per batch from our generator and runs the transforms inside a forked global
RNG seeded with it, so a resumed run is bit-identical and the caller's global
RNG is left untouched.  For speed, the draws replay torchvision's per-image
``forward`` (same calls, same order; this reads the transforms' class tables
``_AUGMENTATION_SPACE`` / ``_policies`` and calls their
``_apply_image_or_video_transform``), and the images sharing an operation are
transformed together; ``tests/test_data_augment.py`` checks the result against
torchvision's own per-image loop, so a torchvision change that broke this
would fail there.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch

POLICIES = ("none", "randaugment", "autoaugment")
AUTOAUGMENT_POLICIES = ("cifar10", "imagenet", "svhn")


@dataclass
class AugmentConfig:
    """Training augmentation.  ``crop_padding=0``, ``flip=False`` and ``policy='none'`` disable it.

    ``policy``: ``randaugment`` (``num_ops`` operations at ``magnitude`` of 31
    bins, torchvision's ``RandAugment``) or ``autoaugment`` (the learned policy
    ``autoaugment_policy``), applied per sample before the crop and flip.
    """

    crop_padding: int = 0
    flip: bool = False
    policy: str = "none"
    num_ops: int = 2
    magnitude: int = 9
    autoaugment_policy: str = "cifar10"

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.policy != "none"


@lru_cache(maxsize=8)
def _policy_transform(policy: str, num_ops: int, magnitude: int, aa_policy: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    if policy == "randaugment":
        return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    if policy == "autoaugment":
        return v2.AutoAugment(policy=v2.AutoAugmentPolicy(aa_policy))
    raise ValueError(f"unknown augmentation policy '{policy}' (choose from {', '.join(POLICIES)})")


def apply_policy(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """RandAugment/AutoAugment on a uint8 batch ``(B, C, H, W)``, one independent draw per image.

    The global CPU RNG that torchvision uses is forked and seeded with one
    number drawn from ``generator``, so the result depends on ``generator``
    alone.  The images stay on their device.
    """
    if cfg.policy == "none":
        return x
    if x.dtype != torch.uint8:
        raise TypeError(f"augmentation policies run on uint8 images, got {x.dtype}")
    t = _policy_transform(cfg.policy, cfg.num_ops, cfg.magnitude, cfg.autoaugment_policy)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        plans = _draw_plans(t, cfg.policy, len(x), x.shape[-2], x.shape[-1])
    return _apply_plans(t, x, plans)


def _draw_plans(t, policy: str, n: int, height: int, width: int) -> list[list[tuple[str, float]]]:
    """Each image's operations ``[(name, magnitude), ...]``, drawn from the global RNG exactly as torchvision does.

    The draws replay ``v2.RandAugment.forward`` / ``v2.AutoAugment.forward``
    image after image (the same calls in the same order), so the plans are
    those that ``torch.stack([t(img) for img in x])`` would apply; a test
    checks the images against that loop.
    """
    space = t._AUGMENTATION_SPACE
    plans = []
    for _ in range(n):
        ops: list[tuple[str, float]] = []
        if policy == "randaugment":
            keys = tuple(space)
            for _ in range(t.num_ops):
                key = keys[int(torch.randint(len(keys), ()))]
                ops.append(_magnitude(space, key, t.magnitude, t.num_magnitude_bins, height, width))
        else:
            sub = t._policies[int(torch.randint(len(t._policies), ()))]
            for key, probability, magnitude_idx in sub:
                if not torch.rand(()) <= probability:
                    continue
                ops.append(_magnitude(space, key, magnitude_idx, 10, height, width))
        plans.append(ops)
    return plans


@lru_cache(maxsize=1024)
def _magnitude_value(space_id: int, key: str, index: int, bins: int, height: int, width: int, space) -> float | None:
    magnitudes = space[key][0](bins, height, width)  # deterministic: no random draw
    return None if magnitudes is None else float(magnitudes[index])


def _magnitude(space, key: str, index: int, bins: int, height: int, width: int) -> tuple[str, float]:
    signed = space[key][1]
    m = _magnitude_value(id(space), key, index, bins, height, width, _Hashable(space))
    if m is None:
        return key, 0.0
    if signed and torch.rand(()) <= 0.5:
        m = -m
    return key, m


class _Hashable:
    """A class-level augmentation-space dict, hashed by identity for the magnitude cache."""

    __slots__ = ("d",)

    def __init__(self, d):
        self.d = d

    def __getitem__(self, key):
        return self.d[key]

    def __hash__(self):
        return id(self.d)

    def __eq__(self, other):
        return isinstance(other, _Hashable) and other.d is self.d


def _apply_plans(t, x: torch.Tensor, plans: list[list[tuple[str, float]]]) -> torch.Tensor:
    """Apply every image's plan, one torchvision call per distinct (position, operation, magnitude) on a sub-batch.

    The operations act on each image independently, so grouping the images
    that share an operation gives the per-image result at a fraction of the
    Python overhead.
    """
    out = x.clone()
    depth = max((len(p) for p in plans), default=0)
    for k in range(depth):
        groups: dict[tuple[str, float], list[int]] = {}
        for i, plan in enumerate(plans):
            if k < len(plan):
                groups.setdefault(plan[k], []).append(i)
        for (key, m), members in groups.items():
            if key == "Identity":
                continue
            idx = torch.tensor(members, device=x.device)
            out[idx] = t._apply_image_or_video_transform(out[idx], key, m, interpolation=t.interpolation, fill=t._fill)
    return out


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the input size at a random offset per image.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` applied per image.
    Implemented with one ``gather`` over the padded batch.
    """
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # b×h
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # b×w
    idx_r = rows[:, None, :, None].expand(b, c, h, w + 2 * padding)
    out = padded.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(b, c, h, w)
    return out.gather(3, idx_c)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image horizontally with probability 1/2."""
    mask = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the configured crop, then flip, to a float batch."""
    x = random_crop(x, cfg.crop_padding, generator)
    if cfg.flip:
        x = random_flip(x, generator)
    return x
