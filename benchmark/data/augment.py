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
RNG is left untouched.
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
        return torch.stack([t(img) for img in x])


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
