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

import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn

from rfbench.core.registry import Registry


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


def unwrap(model: nn.Module, *, eager: bool = False) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper; with ``eager=True`` also inside ``torch.compile``'s.

    The parameters are shared with the wrappers.  A defense attacks ``unwrap(model)`` (the compiled
    graph when the run compiles); code that needs the plain eager module (a ``deepcopy``, AWP's proxy)
    takes ``unwrap(model, eager=True)``.
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif eager and isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
            model = inner  # torch.compile's OptimizedModule
        else:
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
    model_kwargs: dict[str, Any] | None = None,
    **kwargs,
) -> RFModel:
    """Build a registered model.  ``mean``/``std`` default to identity normalisation.

    ``model_kwargs`` (a config's mapping) and ``**kwargs`` are checked against the factory's
    signature first (:func:`factory_kwargs`).
    """
    kwargs = {**(model_kwargs or {}), **kwargs}
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) == 1 and in_channels > 1:
        mean, std = mean * in_channels, std * in_channels
    offered = {"num_classes": num_classes, "in_channels": in_channels, "mean": mean, "std": std}
    return call_factory(MODELS.get(name), name, offered, kwargs)


SET_BY_RFBENCH = ("num_classes", "in_channels", "mean", "std")  # from the dataset, never from model_kwargs


def factory_kwargs(factory: Callable[..., Any], what: str, offered: dict[str, Any], model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for ``factory``: the ``offered`` ones it accepts plus ``model_kwargs``, checked first.

    One-line :class:`ConfigError` before any work for a key rfbench sets from the dataset
    (``num_classes`` given twice), a key the factory's signature does not accept, or a
    required argument of the factory that nothing supplies.
    """
    from rfbench.core.errors import ConfigError

    twice = sorted(set(model_kwargs) & set(SET_BY_RFBENCH))
    if twice:
        raise ConfigError(f"model_kwargs of model {what}: {', '.join(twice)} is set from the dataset; remove it from model_kwargs")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {**offered, **model_kwargs}
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in model_kwargs if k not in named] if not takes_all else []
    if unknown:
        valid = [n for n in named if n not in SET_BY_RFBENCH]
        raise ConfigError(f"model_kwargs of model {what}: unknown key(s) {', '.join(map(str, unknown))}; "
                          f"it accepts: {', '.join(valid) or '(none)'}")
    kwargs = {k: v for k, v in offered.items() if takes_all or k in named}
    kwargs.update(model_kwargs)
    missing = [n for n, p in named.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"model {what} requires argument(s) {', '.join(missing)}; give them in model_kwargs")
    return kwargs


def call_factory(factory: Callable[..., Any], what: str, offered: dict[str, Any], model_kwargs: dict[str, Any]) -> Any:
    """``factory(**factory_kwargs(...))``, with a bad value (``width: -1``) turned into one line."""
    from rfbench.core.errors import ConfigError, RfbenchError

    kwargs = factory_kwargs(factory, what, offered, model_kwargs)
    try:
        return factory(**kwargs)
    except RfbenchError:
        raise
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model {what} with model_kwargs {model_kwargs}: {first[:200]}") from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching ``pattern``."""
    return MODELS.names(pattern)
