"""Weight averaging as a trainer facility: averaged copies of the model that a defense asks for.

A defense never holds the model it trains.  When its method keeps a running
average of the weights (CFA's FAWA, Wei et al., CVPR 2023, Eq. 8; any EMA),
it asks the trainer for one by name in its constructor::

    self.fawa = ctx.averages.request("fawa")

and updates it from its hooks with :meth:`WeightAverages.ema` or
:meth:`WeightAverages.copy`.  The trainer attaches the *bare* training module
(never a ``torch.compile`` or DistributedDataParallel wrapper, so state-dict
keys always match), moves the copies with it, checkpoints them under
``extra_models`` in ``checkpoint-last.pt`` / ``checkpoint-best.pt``, restores
them on resume, and :func:`rfbench.benchmark.train.rundir.load_run_model`
evaluates them (``--which fawa`` / ``fawa-best``).

Under data parallelism every rank holds identical weights after each
optimizer step, so every rank's average is identical too; rank 0 writes it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def ema_update(average: nn.Module, current: nn.Module, decay: float) -> None:
    """``average ← decay·average + (1−decay)·current`` on floating parameters and buffers; others are copied."""
    cur = current.state_dict()
    for k, v in average.state_dict().items():
        src = cur[k].to(v.device)
        if v.is_floating_point():
            v.mul_(decay).add_(src.to(v.dtype), alpha=1.0 - decay)
        else:
            v.copy_(src)


@torch.no_grad()
def copy_weights(target: nn.Module, source: nn.Module) -> None:
    """Copy every parameter and buffer of ``source`` into ``target``."""
    cur = source.state_dict()
    for k, v in target.state_dict().items():
        v.copy_(cur[k].to(v.device))


class WeightAverages:
    """Named averaged copies of one bare module, owned by the trainer (see the module docstring).

    Requests may come before the module exists (a defense is built before its
    model); :meth:`attach` makes the copies.
    """

    def __init__(self) -> None:
        self._names: list[str] = []
        self._source: nn.Module | None = None
        self._copies: dict[str, nn.Module] = {}

    def request(self, name: str) -> str:
        """Ask for an averaged copy called ``name`` (checkpointed and evaluated under that name); returns it."""
        if name in ("best", "last") or name.endswith("-best"):
            raise ValueError(f"weight average name {name!r} is reserved for checkpoints")
        if name not in self._names:
            self._names.append(name)
            if self._source is not None:
                self._copies[name] = _frozen_copy(self._source)
        return name

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def attached(self) -> bool:
        """Whether a module is attached (always in the trainer; not in a defense built only for inference)."""
        return self._source is not None

    def attach(self, module: nn.Module) -> None:
        """Average ``module`` (the bare training module): every requested copy starts as its current weights."""
        self._source = module
        self._copies = {name: _frozen_copy(module) for name in self._names}

    def __getitem__(self, name: str) -> nn.Module:
        """The averaged copy ``name`` (after :meth:`attach`)."""
        if name not in self._copies:
            raise KeyError(f"no weight average {name!r} attached (requested: {self._names})")
        return self._copies[name]

    def _pair(self, name: str) -> tuple[nn.Module, nn.Module]:
        avg = self[name]
        ref = next(self._source.parameters(), None)
        if ref is not None and next(avg.parameters()).device != ref.device:
            avg.to(ref.device)
        return avg, self._source

    def ema(self, name: str, decay: float) -> None:
        """``average ← decay·average + (1−decay)·weights`` of the training module now."""
        ema_update(*self._pair(name), decay)

    def copy(self, name: str) -> None:
        """``average ← weights`` of the training module now."""
        copy_weights(*self._pair(name))

    def modules(self) -> dict[str, nn.Module]:
        return dict(self._copies)

    def state_dict(self) -> dict[str, Any]:
        return {k: m.state_dict() for k, m in self._copies.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, m in self._copies.items():
            if name in state:
                m.load_state_dict(state[name])


def _frozen_copy(module: nn.Module) -> nn.Module:
    avg = copy.deepcopy(module)
    for p in avg.parameters():
        p.requires_grad_(False)
    return avg
