"""Learning-rate schedules as pure functions of the epoch (so resume needs no scheduler state)."""

from __future__ import annotations

import math


def lr_at(epoch: int, base_lr: float, schedule: str, epochs: int, milestones: list[int], gamma: float) -> float:
    """The learning rate used during ``epoch`` (0-based).

    * ``multistep``: ``base_lr · gamma^k`` with k = number of milestones ≤ epoch
      (torch's MultiStepLR; milestone 75 means epochs 75, 76, ... use the decayed rate);
    * ``cosine``: ``base_lr · (1 + cos(π·epoch/epochs)) / 2``;
    * ``constant``: ``base_lr``.
    """
    if schedule == "multistep":
        return base_lr * gamma ** sum(1 for m in milestones if m <= epoch)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))
    return base_lr


def warmup_factor(step: int, warmup_iters: int) -> float:
    """Linear learning-rate warm-up over the first ``warmup_iters`` optimiser steps (0-based ``step``).

    The rate of step ``s`` is the epoch's rate times ``(s + 1) / warmup_iters`` while ``s < warmup_iters``,
    then times 1 (Goyal et al., 2017, "Accurate, Large Minibatch SGD", section 2.2, gradual warm-up).
    ``warmup_iters = 0`` turns it off.  It is a function of the global step, so resume needs no state.
    """
    if warmup_iters <= 0 or step >= warmup_iters:
        return 1.0
    return (step + 1) / warmup_iters


def resolve_milestones(milestones: list[int], fractions: list[float], epochs: int) -> list[int]:
    """The multistep milestones in epochs: ``milestones`` if given, else ``round(f·epochs)`` for each fraction.

    Fractions let one definition serve any budget: a paper's milestones 75 and 90 of 100 epochs are
    ``milestone_fractions: [0.75, 0.9]``.  A milestone is at least epoch 1.
    """
    if milestones:
        return list(milestones)
    return [max(1, round(f * epochs)) for f in fractions]
