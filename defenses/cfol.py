"""CFOL: Class-Focused Online Learning (Pethick, Chrysos & Cevher, TMLR 2023).

Adversarial training as a game against a *class* adversary: the adversary
keeps log-weights ``w`` over the C classes and samples the class of every
training example from

    p = ½·uniform + ½·softmax(w),

then an example uniformly within that class.  It plays Exp3 (a bandit that
maximises the learner's loss): after every batch, for each sample with label y,

    w_y += η · 1[adversarial prediction wrong] / q_y,     η = 5e-6,

where ``q`` is the distribution the sample was drawn from (the importance
weight makes the reward estimate unbiased).  Classes the model keeps getting
wrong are sampled more.  The learner minimises PGD-AT's CE on the batches.

* ``cfol``: the sampler.  rfbench's trainer asks for the order once per epoch
  (:meth:`~rfbench.defenses.base.Defense.sample_order`), so ``p`` is drawn at the start
  of each epoch from the current ``w`` (and ``q = p`` for that epoch), while ``w``
  is updated after every batch; the epoch length stays the training-set size.
* ``cfol-rw``: keeps the uniform data order and multiplies each sample's loss
  by ``C·p_y`` (``p`` from the current ``w``); the samples come from the class
  frequencies ``q_y = n_y/N``, which is the importance weight of its update.

The per-sample updates of a batch are summed (each sample is one bandit round).
Randomness comes only from the generator the trainer passes, so resuming is bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.core.config import in_range
from rfbench.defenses.base import Defense, EpochStats, LossOutput
from rfbench.defenses.registry import register_defense


def cfol_distribution(w: torch.Tensor, uniform_mix: float = 0.5) -> torch.Tensor:
    """The class adversary's distribution ``γ·uniform + (1−γ)·softmax(w)`` (CFOL Alg. 1, γ = ½)."""
    w = w.double()
    return uniform_mix / w.numel() + (1.0 - uniform_mix) * torch.softmax(w, dim=0)


def cfol_exp3_update(w: torch.Tensor, y: torch.Tensor, wrong: torch.Tensor, q: torch.Tensor, eta: float) -> torch.Tensor:
    """Exp3 step ``w_y += η·1[wrong]/q_y`` summed over the batch (CFOL Alg. 1); returns the new ``w``.

    Computed on ``w``'s device; the defense keeps ``w`` on the training device, so the per-batch update
    copies nothing to the host.
    """
    y = y.long().to(w.device)
    gain = eta * wrong.double().to(w.device) / q.double().to(w.device)[y]
    return w.double().index_add(0, y, gain)


def sample_by_class(labels: torch.Tensor, probs: torch.Tensor, num: int, generator: torch.Generator | None) -> torch.Tensor:
    """``num`` positions: a class drawn from ``probs``, then an example uniformly within it (with replacement)."""
    device = generator.device if generator is not None else torch.device("cpu")
    labels = labels.long().to(device)
    c = probs.numel()
    counts = torch.bincount(labels, minlength=c)
    probs = probs.double().to(device) * (counts > 0)  # never draw a class with no example
    by_class = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    cls = torch.multinomial(probs / probs.sum(), num, replacement=True, generator=generator)
    u = torch.rand(num, generator=generator, device=device, dtype=torch.float64)
    within = torch.minimum((u * counts[cls]).long(), counts[cls] - 1)
    return by_class[starts[cls] + within].cpu()


@dataclass
class CFOLConfig:
    """The settings of :class:`CFOL`, with their registered defaults."""

    eta: float = field(default=5e-6, metadata=in_range(0, None))  # Exp3 step
    uniform_mix: float = field(default=0.5, metadata=in_range(0, 1))  # γ of γ·uniform + (1−γ)·softmax(w)


@register_defense("cfol")
class CFOL(Defense[CFOLConfig]):
    """CFOL-AT (Pethick et al., TMLR 2023): PGD-AT with an Exp3 class sampler focusing on the failing classes."""

    reweight: ClassVar[bool] = False

    Config = CFOLConfig

    state_keys = ("w", "q")

    def __init__(self, cfg: CFOLConfig, ctx):
        super().__init__(cfg, ctx)
        c = ctx.num_classes
        self.w = torch.zeros(c, dtype=torch.float64, device=ctx.device)  # on the device: no host copy per batch
        if self.reweight:
            counts = torch.as_tensor(ctx.train_counts, dtype=torch.float64, device=ctx.device)
            self.q = counts / counts.sum()  # uniform data order: class frequencies
        else:
            self.q = cfol_distribution(self.w, cfg.uniform_mix)  # the distribution this epoch samples from

    def distribution(self) -> torch.Tensor:
        """The adversary's current class distribution p."""
        return cfol_distribution(self.w, self.cfg.uniform_mix)

    def sample_order(self, epoch: int, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        if self.reweight:
            return None
        self.q = self.distribution()
        return sample_by_class(labels, self.q, len(labels), generator)

    def on_batch_end(self, y: torch.Tensor, adv_logits: torch.Tensor | None) -> None:
        if adv_logits is None:
            return
        wrong = adv_logits.detach().argmax(1) != y
        self.w = cfol_exp3_update(self.w, y, wrong, self.q, self.cfg.eta)

    def on_epoch_end(self, stats: EpochStats) -> dict[str, Any]:
        return {"cfol_p": self.distribution().tolist()}


@register_defense("cfol-rw")
class CFOLReweight(CFOL):
    """CFOL reweighting variant (Pethick et al., TMLR 2023): uniform sampling, loss × C·p_y from the Exp3 adversary."""

    reweight = True

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        logits = model(x_adv)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        weight = self.ctx.num_classes * self.distribution().to(device=y.device, dtype=ce.dtype)[y]
        return LossOutput((weight * ce).mean(), logits)
