"""Run under ``torchrun --nproc-per-node 2``: train each named defense for 2 tiny epochs in one process group.

Usage: ``torchrun --standalone --nproc-per-node 2 tests/ddp_defenses.py OUT DEFENSE [DEFENSE ...]``.

For every defense it trains into ``OUT/<defense>`` and then checks that every
rank holds the same weights, the same weight averages and the same defense
state (an all-gather of a digest).  Rank 0 writes ``OUT/<defense>/ranks.json``
with the digests.  Used by ``tests/test_ddp.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.trainer import Trainer

TINY: dict[str, Any] = dict(dataset="fashion-mnist", model="smallcnn", model_kwargs={"width": 0.25}, epochs=2, max_train_samples=200,
            val_per_class=4, steps=2, val_steps=1, batch_size=50, lr=0.01, optimizer="sgd", device="cpu", seed=3)


def _digest(obj) -> str:
    """A digest of tensors, numbers and containers (rounded, so float noise across ranks would still show)."""
    h = hashlib.sha256()

    def walk(v):
        if torch.is_tensor(v):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                h.update(str(k).encode())
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        else:
            h.update(repr(v).encode())

    walk(obj)
    return h.hexdigest()[:16]


def main(out: str, defenses: list[str]) -> None:
    for name in defenses:
        trainer = Trainer(TrainConfig(**TINY, defense=name, out=str(Path(out) / name)), quiet=True, force=True)
        trainer.fit()
        mine = {"model": _digest(trainer.module.state_dict()), "averages": _digest(trainer.averages.state_dict()),
                "defense": _digest(trainer.defense.state_dict())}
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        if dist.get_rank() == 0:
            (Path(out) / name / "ranks.json").write_text(json.dumps(every))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
