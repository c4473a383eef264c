"""The distributed launch described by the environment (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ...).

``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in every process it starts.  rfbench reads them in one place,
here: a launch is in force only when ``WORLD_SIZE`` is above 1, and then every
other variable must be present and valid, or the command stops with one line
naming the variable, its value and why.  With no ``WORLD_SIZE`` (or 1) a stray
``RANK`` means nothing: the process is a single process and rank 0, so it
writes and takes its directory's lock like any other command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from rfbench.core.errors import RfbenchError

#: the largest world size accepted from the environment (far above any real launch)
MAX_WORLD = 1 << 16


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: ``world`` processes, this one ``rank`` (``local_rank`` on its host)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], name: str, lo: int, hi: int, why: str) -> int:
    text = env.get(name)
    if text is None or not text.strip():
        raise RfbenchError(f"{name} is not set, but WORLD_SIZE={env.get('WORLD_SIZE')} asks for a distributed "
                           f"launch; {why}")
    try:
        value = int(text.strip())
    except ValueError:
        raise RfbenchError(f"{name}={text!r} is not an integer; {why}") from None
    if not lo <= value <= hi:
        raise RfbenchError(f"{name}={value} is out of range: it must be in [{lo}, {hi}]; {why}")
    return value


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch:
    """The launch of ``env`` (default ``os.environ``), checked; a bad variable is one :class:`RfbenchError` line."""
    env = os.environ if env is None else env
    hint = "start data-parallel runs with torchrun, or unset WORLD_SIZE for a single process"
    text = env.get("WORLD_SIZE")
    if text is None or not text.strip():
        return Launch()
    try:
        world = int(text.strip())
    except ValueError:
        raise RfbenchError(f"WORLD_SIZE={text!r} is not an integer; {hint}") from None
    if not 1 <= world <= MAX_WORLD:
        raise RfbenchError(f"WORLD_SIZE={world} is out of range: it must be in [1, {MAX_WORLD}]; {hint}")
    if world == 1:
        return Launch()
    rank = _int(env, "RANK", 0, world - 1, hint)
    local = _int(env, "LOCAL_RANK", 0, world - 1, hint) if env.get("LOCAL_RANK", "").strip() else 0
    if not env.get("MASTER_ADDR", "").strip():
        raise RfbenchError(f"MASTER_ADDR is not set, but WORLD_SIZE={world} asks for a distributed launch; {hint}")
    _int(env, "MASTER_PORT", 1, 65535, hint)
    return Launch(world, rank, local)
