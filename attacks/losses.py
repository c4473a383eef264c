"""Per-sample attack losses for the PGD core.

Every loss maps ``(logits, y, aux)`` to a per-sample loss of shape ``(B,)``
that the attack *maximises*.  ``aux`` holds the core's per-sample tensors
(``pgd(aux=...)``: clean probabilities for KL, a per-sample temperature),
already restricted to the samples still being attacked, merged with its
shared tensors (``pgd(shared_aux=...)``: per-class weights), which are never
sliced.

Registered names: ``ce``, ``cw`` (margin, clamp at −κ), ``dlr`` (Croce & Hein
2020, Eq. 5), ``kl`` (TRADES inner maximisation, Zhang et al. 2019, Eq. 5),
``tce`` (Temperature-PGD: CE on ``z/T``, Tian et al. KDD 2021), ``wce``
(class-weighted CE, REAT's released RBL) and ``la-ce`` (CE on logits
adjusted by ``−log w_y``: the RBL whose weights act inside the softmax).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from rfbench.core.registry import Registry


class AttackLoss(Protocol):
    def __call__(self, logits: torch.Tensor, y: torch.Tensor, aux: dict[str, torch.Tensor]) -> torch.Tensor: ...


LOSSES: Registry[Callable[..., AttackLoss]] = Registry("attack loss")


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j≠y} z_j."""
    mask = F.one_hot(y, logits.shape[1]).bool()
    return logits.masked_fill(mask, float("-inf")).amax(dim=1)


@LOSSES.register("ce")
def ce_loss() -> AttackLoss:
    """Cross-entropy CE(z, y) (Madry et al. 2018)."""
    return lambda logits, y, aux: F.cross_entropy(logits, y, reduction="none")


@LOSSES.register("cw")
def cw_loss(kappa: float = 50.0) -> AttackLoss:
    """CW margin max_{j≠y} z_j − z_y, clamped at −κ (Carlini & Wagner 2017; κ=50 as in RoBal/WAT)."""

    def f(logits, y, aux):
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        return (_other_max(logits, y) - z_y).clamp(min=-kappa)

    return f


@LOSSES.register("dlr")
def dlr_loss() -> AttackLoss:
    """DLR = −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e−12) (Croce & Hein, ICML 2020, Eq. 5)."""

    def f(logits, y, aux):
        srt = logits.sort(dim=1, descending=True).values
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        return -(z_y - _other_max(logits, y)) / (srt[:, 0] - srt[:, 2] + 1e-12)

    return f


@LOSSES.register("kl")
def kl_loss() -> AttackLoss:
    """KL(p(x) ‖ p(x')) against the clean probabilities ``aux['clean_probs']`` (TRADES, Eq. 5)."""

    def f(logits, y, aux):
        p = aux["clean_probs"]
        return (p * (torch.log(p.clamp_min(1e-12)) - F.log_softmax(logits, dim=1))).sum(dim=1)

    return f


@LOSSES.register("tce")
def temperature_ce_loss(T: float = 1.0) -> AttackLoss:
    """CE(softmax(z/T), y); T from ``aux['T']`` (per sample) if present, else the scalar ``T``.

    Temperature-PGD (Tian et al., KDD 2021).  T = 1 is exactly CE.
    """

    def f(logits, y, aux):
        t = aux["T"][:, None] if "T" in aux else T
        z = logits if (not torch.is_tensor(t) and t == 1.0) else logits / t
        return F.cross_entropy(z, y, reduction="none")

    return f


@LOSSES.register("wce")
def weighted_ce_loss() -> AttackLoss:
    """w_y · CE(z, y) with class weights ``aux['class_weights']`` (REAT's released RBL, Li et al. 2023).

    With sign steps a positive per-sample weight cannot change any step.
    """

    def f(logits, y, aux):
        return aux["class_weights"][y] * F.cross_entropy(logits, y, reduction="none")

    return f


@LOSSES.register("la-ce")
def logit_adjusted_ce_loss() -> AttackLoss:
    """CE(z − log w, y): RBL with the class weights inside the softmax, so they act on the step direction."""

    def f(logits, y, aux):
        return F.cross_entropy(logits - torch.log(aux["class_weights"])[None, :], y, reduction="none")

    return f


def make_loss(name: str | AttackLoss, **kwargs) -> AttackLoss:
    """A loss by registered name (with its keyword parameters), or a callable as is."""
    if callable(name):
        return name
    return LOSSES.get(name)(**kwargs)
