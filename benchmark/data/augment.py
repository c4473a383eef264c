"""Batch augmentation in plain torch, on the batch's device.

Random crop with zero padding and horizontal flip, applied to a whole batch at
once (as airbench does) instead of per sample in Python.  Randomness comes
from a CPU ``torch.Generator`` so that a seeded run is reproducible on any
device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AugmentConfig:
    """Training augmentation.  ``crop_padding=0`` and ``flip=False`` disable it."""

    crop_padding: int = 0
    flip: bool = False

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip


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
