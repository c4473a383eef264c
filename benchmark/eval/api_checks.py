"""Checks of the Python API's inputs (:func:`rfbench.evaluate`): each bad value is one line naming it and why.

The command line reads its inputs through typed configs; a Python caller passes tensors and numbers
directly, so they are checked here before any attack: the threat's ``steps`` and ``alpha``, the
images (``N×C×H×W``, finite), the labels (integers, one per image, each a class), the class names
(distinct) and ``n_per_class`` (no more than the smallest class has).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rfbench.core.errors import ConfigError, RfbenchError

#: channel counts an image tensor's channel axis may have
CHANNELS = (1, 3, 4)


def check_threat_args(steps: Any, alpha: Any) -> None:
    """``steps`` None or an integer >= 1 (0 is not "the default"); ``alpha`` None or a finite number > 0."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"steps={steps!r}: must be an integer of at least 1 (leave it out for the default)")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ConfigError(f"alpha={alpha!r}: the attack step must be a finite number above 0 (a step of 0 never "
                              "moves the attack, so every point would count as robust)")


def check_images(x: torch.Tensor) -> None:
    """``x`` is ``N×C×H×W`` (an ``N×H×W×C`` array is named as such) with finite values."""
    if x.ndim != 4:
        raise RfbenchError(f"x has shape {tuple(x.shape)}: expected N×C×H×W images (4 dimensions)")
    if x.shape[1] not in CHANNELS and x.shape[-1] in CHANNELS:
        raise RfbenchError(f"x has shape {tuple(x.shape)}, which looks like N×H×W×C (channels last); rfbench takes "
                           "N×C×H×W: pass x.permute(0, 3, 1, 2) (NumPy: x.transpose(0, 3, 1, 2))")
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bad.any():
            first = int(bad.flatten(1).any(1).nonzero()[0])
            raise RfbenchError(f"x holds {int(bad.sum())} NaN or Inf pixel values (the first in image {first}); "
                               "the input is at fault, not the model: fix or drop those images")


def check_labels(y: torch.Tensor, n: int, classes: Sequence[str]) -> None:
    """``y`` holds ``n`` integer labels in ``[0, len(classes))``; float labels are refused, not truncated."""
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise RfbenchError(f"y holds {y.dtype} labels; pass integer class indices (e.g. y.long()), which rfbench "
                           "never makes by truncating")
    if y.numel() != n:
        raise RfbenchError(f"y holds {y.numel()} labels for {n} images; give one label per image")
    if n and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise RfbenchError(f"y holds the label {bad}, but there are {len(classes)} classes (labels 0 to "
                           f"{len(classes) - 1})")


def check_classes(classes: Sequence[str]) -> None:
    seen: set[str] = set()
    for c in classes:
        if c in seen:
            raise RfbenchError(f"classes names {c!r} twice; class names must differ (they label the per-class results)")
        seen.add(c)


def check_n_per_class(n_per_class: int | None, y: torch.Tensor, classes: Sequence[str]) -> None:
    """``n_per_class`` no more than the smallest class holds (a subset cannot be larger than the set)."""
    if n_per_class is None:
        return
    counts = torch.bincount(y.long(), minlength=len(classes))
    k = int(counts.argmin())
    if n_per_class > int(counts[k]):
        raise RfbenchError(f"n_per_class={n_per_class} is more than class {classes[k]!r} has ({int(counts[k])} "
                           "images); lower it, or leave it out to evaluate every image")


def check_outputs_materialised(out: Any) -> None:
    """Outputs on the ``meta`` device are shapes without values: one line saying why."""
    if torch.is_tensor(out) and out.device.type == "meta":
        raise RfbenchError("the model returned outputs on the meta device (its weights were never materialised); "
                           "load real weights, e.g. model.to_empty(device=...) then load_state_dict(...)")


def check_model_materialised(model: torch.nn.Module) -> None:
    """A model with weights on the ``meta`` device has no values to evaluate: one line naming the first such weight."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise RfbenchError(f"the model's {name} is on the meta device (its weights were never materialised); "
                               "load real weights, e.g. model.to_empty(device=...) then load_state_dict(...)")
