"""The model contract and the model registry.

Every rfbench model takes inputs in [0,1], normalises inside (as RobustBench
models do, so eps is in pixel scale), and exposes:

* ``features(x)``: the penultimate features ``f`` (REAT, RoBal and the
  weight-norm diagnostics need them);
* ``head``: the classifier applied to ``f`` (a ``nn.Linear`` unless a defense
  swapped in a cosine head);
* ``forward(x) = head(features(x))``: the logits;
  ``forward(x, return_features=True)`` returns ``(logits, features)`` from one
  pass (use this form in a defense's loss: it also goes through a
  DistributedDataParallel wrapper, which ``model.features`` would bypass).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from rfbench.benchmark.registry import Registry


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a module, so checkpoints carry it."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RFModel(nn.Module):
    """Base class: ``normalize`` → ``body`` (to features) → ``head`` (to logits).

    Subclasses build ``self.body`` (mapping normalised images to a flat
    feature vector of size ``feature_dim``); the base class adds the
    normalisation and a linear head.
    """

    feature_dim: int

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)

    def _init_head(self, feature_dim: int) -> None:
        self.feature_dim = feature_dim
        self.head: nn.Module = nn.Linear(feature_dim, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of inputs ``x`` in [0,1]."""
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        logits = self.head(f)
        return (logits, f) if return_features else logits


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    while isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model


ModelFactory = Callable[..., RFModel]
MODELS: Registry[ModelFactory] = Registry("model")
register_model = MODELS.register


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs,
) -> RFModel:
    """Build a registered model.  ``mean``/``std`` default to identity normalisation."""
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) == 1 and in_channels > 1:
        mean, std = mean * in_channels, std * in_channels
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching ``pattern``."""
    return MODELS.names(pattern)
