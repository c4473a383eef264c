"""A user plugin defense for the NaN tests: PGD-AT whose loss or logits turn NaN/Inf on one chosen batch.

Loaded by the command line as ``--defense tests/faults/plugins/poisoned_defense.py:PoisonedAT``
(so the tests also exercise user plugin files), with ``defense_args.*`` choosing the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rfbench.core.config import choice, in_range
from rfbench.defenses.standard import PGDAT


class PoisonedAT(PGDAT):
    """PGD-AT, except that on batch ``at_batch`` of epoch ``at_epoch`` (1-based) ``what`` becomes ``value``."""

    @dataclass
    class Config:
        at_epoch: int = field(default=1, metadata=in_range(1, None))
        at_batch: int = field(default=1, metadata=in_range(1, None))
        what: str = field(default="loss", metadata=choice("loss", "logits"))
        value: str = field(default="nan", metadata=choice("nan", "inf"))

    state_keys = ("batch", "batch_epoch")  # saved in checkpoints: the count survives a mid-epoch resume

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.batch, self.batch_epoch = 0, -1

    def training_step(self, model, x, y, pos=None):
        out = super().training_step(model, x, y, pos)
        if self.batch_epoch != self.epoch:
            self.batch, self.batch_epoch = 0, self.epoch
        self.batch += 1
        c = self.cfg
        if (self.epoch + 1, self.batch) == (c.at_epoch, c.at_batch):
            bad = float(c.value)
            if c.what == "loss":
                out.loss = out.loss * bad
            else:
                out.adv_logits = out.adv_logits.detach().clone()
                out.adv_logits[0, 0] = bad
        return out
