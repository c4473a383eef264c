"""Data-parallel helpers for ``torchrun``: a no-op in a single process.

Each rank processes a contiguous shard of every *global* batch (the same
shards ``torch.tensor_split`` makes), gradients are averaged by
DistributedDataParallel, per-class counts are all-reduced, and only rank 0
writes files.  With the loss of each shard scaled by ``n_local·W/N`` the
update equals a single process's on the global batch, up to float rounding.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from rfbench.core.launch import Launch, launch_from_env

#: this process's place in the training launch (``rfbench.core.launch``'s one type)
DistInfo = Launch


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); otherwise single-process.

    The environment is read and checked by :func:`rfbench.core.launch.launch_from_env` (one line for a bad value).
    """
    launch = launch_from_env()
    if not launch.distributed:
        return DistInfo(), device
    info = DistInfo(launch.world, launch.rank, launch.local_rank)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def shard(n_global: int, info: DistInfo) -> tuple[int, int]:
    """``(offset, n_local)`` of this rank's rows in a global batch of ``n_global`` (tensor_split layout)."""
    base, extra = divmod(n_global, info.world)
    n_local = base + (1 if info.rank < extra else 0)
    offset = info.rank * base + min(info.rank, extra)
    return offset, n_local


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op in a single process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_rows(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's rows of ``t`` in rank order (shards may differ in size by one)."""
    if not info.distributed:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world)]
    dist.all_gather(sizes, n)
    width = int(max(s.item() for s in sizes))
    padded = t.new_zeros((width, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(info.world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (so every rank takes the same branch)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


class ShardedGenerator:
    """The attack generator of a data-parallel run: draws made for the *global* training batch, sliced per rank.

    Rank r attacks rows ``offset:offset+n_local`` of a global batch of
    ``n_global``.  Inside :meth:`batch` a random start drawn for a tensor of
    this rank's ``n_local`` rows is drawn for all ``n_global`` rows from the
    shared seeded generator and this rank's rows are kept: exactly the start a
    single process would have drawn, and every rank's generator advances
    alike.  Outside :meth:`batch` (validation, a defense's own measurement on
    another batch, which every rank runs whole) it is the plain generator.
    The PGD core only calls :meth:`draw`; it knows nothing of ranks.
    """

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self._shard: tuple[int, int, int] | None = None  # (n_global, offset, n_local) inside batch()

    @contextlib.contextmanager
    def batch(self, n_global: int, offset: int, n_local: int) -> Iterator[None]:
        """Shard draws for this training batch only."""
        self._shard = (n_global, offset, n_local)
        try:
            yield
        finally:
            self._shard = None

    def draw(self, like: torch.Tensor, fill: Callable[[torch.Tensor, torch.Generator], torch.Tensor]) -> torch.Tensor:
        """``fill(t, generator)`` for a tensor shaped like ``like`` (see the class docstring)."""
        if self._shard is not None and like.shape[0] == self._shard[2]:
            n_global, offset, n_local = self._shard
            full = fill(like.new_empty((n_global, *like.shape[1:])), self.generator)
            return full[offset: offset + n_local]
        if self._shard is not None:
            raise RuntimeError(f"a random draw for {like.shape[0]} rows inside a data-parallel training batch of "
                               f"{self._shard[2]} local rows; attack the whole local batch, or draw outside the step")
        return fill(torch.empty_like(like), self.generator)
