"""Checks on the evaluated model itself, run before any attack: is it a deterministic map to logits?

A user's model can be wrong in ways that make every robustness number
meaningless while nothing crashes:

* **wrong output shape** (not ``(batch, num_classes)``): an error, before any attack;
* **NaN/Inf outputs** on clean test images: an error;
* **probabilities instead of logits** (every row in [0,1] and summing to 1): gradient
  attacks through a softmax output saturate, so robustness is overstated (Carlini &
  Wagner, IEEE S&P 2017, Sec. V; Croce & Hein, ICML 2020, "checks");
* **nondeterminism** (two forward passes on the same inputs differ: dropout left on,
  a randomised defense): attacks without expectation over transformation overstate
  robustness (Athalye et al., ICML 2018, Sec. 4.3).

The last two are warnings recorded in the result's ``checks.model``, together
with what pyautoattack's own checks (``check_range_output``,
``check_randomized``) say about the same batch, so they are visible even when
AutoAttack is not part of the suite.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from rfbench.core.errors import RfbenchError

log = logging.getLogger(__name__)

PROB_ATOL = 1e-5  # rows within this of the simplex count as probabilities (pyautoattack uses 1e-5 too)
NONDETERMINISM_RTOL = 1e-4  # relative to the largest |logit|: above it, two passes "differ"


class ModelOutputError(RfbenchError):
    """The model does not map a batch of images to a finite (batch, num_classes) tensor."""


def _forward(model: torch.nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return _forward_or_explain(model, x)


def _forward_or_explain(model: torch.nn.Module, x: torch.Tensor) -> Any:
    """``model(x)``, with an error inside the model (a shape mismatch) turned into one line naming the image size."""
    try:
        return model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc):
            raise RfbenchError(f"out of memory in the model check, a forward of {x.shape[0]} images: "
                               f"{str(exc).splitlines()[0][:200]}") from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = ("; SmallCNN is built for 28x28 images by default: set model_kwargs image_size"
                if "shapes cannot be multiplied" in first else "")
        size = "x".join(str(d) for d in x.shape[1:])
        raise ModelOutputError(f"the model cannot take {size} images: {first[:200]}{hint}") from None


def check_forward(model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """One tiny forward with gradients: the model must take ``x`` and return float logits that carry a gradient.

    Raises :class:`ModelOutputError` (one line) for a shape error inside the model (e.g. a
    SmallCNN built for 28x28 images given 32x32 ones), a non-tensor or wrongly shaped output,
    integer logits, or logits with no gradient to the input (attacks need it). Run before any work.
    """
    was_training = model.training
    model.eval()
    try:
        xi = x[:2].detach().clone().float().requires_grad_(True)
        with torch.enable_grad():
            out = _forward_or_explain(model, xi)
    finally:
        model.train(was_training)
    if not torch.is_tensor(out):
        raise ModelOutputError(f"the model returned {type(out).__name__}, expected a tensor of logits of shape "
                               f"(batch, {num_classes})")
    if tuple(out.shape) != (xi.shape[0], num_classes):
        raise ModelOutputError(f"the model returned shape {tuple(out.shape)} for a batch of {xi.shape[0]} images, "
                               f"expected {(xi.shape[0], num_classes)}: one logit per class of the dataset")
    if not out.is_floating_point():
        raise ModelOutputError(f"the model returned {str(out.dtype).replace('torch.', '')} logits; "
                               "attacks and training need floating-point logits")
    if not out.requires_grad:
        raise ModelOutputError("the model's logits carry no gradient (computed under torch.no_grad() or detached); "
                               "attacks and training need gradients through the model")


def looks_like_probabilities(out: torch.Tensor) -> bool:
    """Every entry in [0,1] and every row summing to 1 (within :data:`PROB_ATOL`)."""
    out = out.double()
    return bool(out.min() >= -PROB_ATOL and out.max() <= 1 + PROB_ATOL
                and ((out.sum(1) - 1).abs() <= PROB_ATOL * out.shape[1]).all())


def autoattack_checks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict[str, Any]]:
    """pyautoattack's softmax-output and randomness checks on ``(x, y)``, as flags ``{id: {message, count}}``."""
    from pyautoattack import checks

    from rfbench.attacks.autoattack import _routed

    flags: dict[str, dict[str, Any]] = {}
    with _routed(flags):
        checks.check_range_output(model, x)
        checks.check_randomized(model, x, y)
    return flags


def check_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Run the checks on one batch of clean test images; raise :class:`ModelOutputError` for a broken output.

    Returns ``{"verdict": "pass" | "warn", "detail", "output_shape", "findings": {id: message},
    "autoattack_checks": {flag id: {message, count}}, "max_forward_difference"}``.
    """
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise RfbenchError("the input images hold NaN or Inf values; the input is at fault, not the model")
    before = x.clone()
    out = _forward(model, x)
    if not torch.equal(x, before):
        raise ModelOutputError("the model changes its input images in place (in its forward); attacks reuse those "
                               "images, so every result would be wrong: work on a copy (x = x.clone()) in forward")
    if torch.is_tensor(out) and out.device.type == "meta":
        raise ModelOutputError("the model returned outputs on the meta device (its weights were never "
                               "materialised); load real weights, e.g. model.to_empty(device=...) then "
                               "load_state_dict(...)")
    if not torch.is_tensor(out):
        raise ModelOutputError(f"the model returned {type(out).__name__}, expected a tensor of logits of shape "
                               f"(batch, {num_classes})")
    expected = (x.shape[0], num_classes)
    if tuple(out.shape) != expected:
        raise ModelOutputError(f"the model returned shape {tuple(out.shape)} for a batch of {x.shape[0]} images, "
                               f"expected {expected}: one logit per class of the dataset ({num_classes} classes)")
    if not torch.isfinite(out).all():
        raise ModelOutputError("the model returned NaN or Inf outputs on clean test images")
    check_forward(model, x, num_classes)  # float logits with a gradient
    out = out.float()
    findings: dict[str, str] = {}
    if looks_like_probabilities(out):
        findings["probabilities"] = ("the model's outputs look like probabilities (every row in [0,1], summing to 1); "
                                     "attacks need logits (the scores before softmax), else their gradients vanish "
                                     "and robustness is overstated")
    again = _forward(model, x).float()
    diff = float((again - out).abs().max())
    if diff > NONDETERMINISM_RTOL * (1.0 + float(out.abs().max())):
        findings["nondeterministic"] = (f"two forward passes on the same images differ (max |difference| {diff:.3g}): "
                                        "dropout left on, or a randomised defense; attacks without expectation over "
                                        "transformation overstate its robustness")
    aa = autoattack_checks(model, x, y)
    for message in findings.values():
        log.warning("model check: %s", message)
    verdict = "warn" if findings or aa else "pass"
    return {"verdict": verdict, "detail": "model maps images to deterministic logits (shape, range, repeatability)",
            "output_shape": list(out.shape), "findings": findings, "autoattack_checks": aa,
            "max_forward_difference": diff}
