"""Sharded evaluation: the batches of one evaluation split over processes or machines, merged into one result.

Shard ``k`` of ``n`` evaluates *whole* batches of the evaluated subset (the
batches a single process makes, in the same order), about one in ``n``
(:func:`batch_owners`).  A
batch's attack randomness is seeded by ``(seed, attack label, batch index)``
(:func:`rfbench.benchmark.eval.harness.batch_seed`) and a batch is attacked the
same way whoever runs it, so the merged per-sample flags equal a single
process's flags bit for bit (same device and thread count; an out-of-memory
halving changes the piece size of the *following* batches in one process, so
after one a sharded run can differ from an unsharded one, as a resumed run can).

Class balance: batches are dealt in rounds of ``n``, one to each shard, and within
a round each batch goes to the free shard whose class counts it brings closest to
that shard's share of the classes seen so far.  So every shard gets the same
number of batches (± 1) and class counts within about one batch of its share
(:func:`shard_class_counts`); the assignment is a function of the labels, the
batch size and ``n`` alone (integer arithmetic), so every process computes the same.

Each shard writes its resumable flag file ``OUT/shard-K-of-N/flags.npz`` and
nothing else; the merge (:func:`merge_shard_flags`) checks that every shard file
belongs to the same evaluation and is complete, and the harness then writes
``OUT/flags.npz`` and ``OUT/result.json`` as an unsharded run does.  A killed
shard resumes alone from its own file.  ``docs/evaluation.md`` shows the
launchers (``torchrun``, any launcher setting ``RANK``/``WORLD_SIZE``, Ray).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.core.errors import ConfigError, RfbenchError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; ``index=None`` is the merge step (runs no batch, merges the shard files)."""

    index: int | None
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"the number of shards must be at least 1, got {self.count}")
        if self.index is not None and not 0 <= self.index < self.count:
            raise ConfigError(f"shard index must lie in 0..{self.count - 1}, got {self.index}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"K/N"``: shard K (from 0) of N."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise ConfigError(f"--shard expects K/N (shard K of N, K from 0), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def merging(self) -> bool:
        return self.index is None

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def directory(self, out_dir: Path) -> Path:
        """Where this shard keeps its flag file: ``OUT/shard-K-of-N``."""
        return Path(out_dir) / self.name


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of this process when a launcher (torchrun or another) set ``WORLD_SIZE`` > 1 and ``RANK``."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return Shard(int(env["RANK"]), world)
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE > 1 needs RANK as an integer in 0..WORLD_SIZE-1 (set by torchrun); "
                          f"got WORLD_SIZE={env.get('WORLD_SIZE')!r} RANK={env.get('RANK')!r}") from None


def shard_paths(out_dir: Path, count: int, flags_file: str) -> list[Path]:
    """The flag files of shards 0..count-1."""
    return [Shard(k, count).directory(out_dir) / flags_file for k in range(count)]


def batch_owners(y: np.ndarray, batch_size: int, count: int) -> np.ndarray:
    """The shard (0..count-1) of every batch of ``batch_size`` consecutive samples with labels ``y``.

    Rounds of ``count`` batches, one per shard; within a round a batch goes to the
    free shard minimising the sum over shards of ``Σ_c (n_kc·N − n_k·N_c)²`` after
    adding it (``n_kc``: shard k's samples of class c, ``n_k`` its samples, ``N_c``/``N``
    those of every shard so far, this batch included), ties to the lowest index.  Exact integers, so deterministic.
    """
    y = np.asarray(y, dtype=np.int64)
    n_batches = (len(y) + batch_size - 1) // batch_size
    classes = int(y.max()) + 1 if len(y) else 1
    hist = [np.bincount(y[b * batch_size:(b + 1) * batch_size], minlength=classes) for b in range(n_batches)]
    counts = np.zeros((count, classes), dtype=np.int64)
    owners = np.zeros(n_batches, dtype=np.int64)
    for start in range(0, n_batches, count):
        free = list(range(count))
        for b in range(start, min(start + count, n_batches)):
            seen = counts.sum(0) + hist[b]
            n_seen = int(seen.sum())

            def dev(c: np.ndarray) -> int:  # the shard's squared deviation from its share (Python ints: exact)
                return sum(d * d for d in (c * n_seen - int(c.sum()) * seen).tolist())

            # the other shards' deviations do not depend on where batch b goes
            k = min(free, key=lambda k: (dev(counts[k] + hist[b]) - dev(counts[k]), k))
            free.remove(k)
            owners[b] = k
            counts[k] += hist[b]
    return owners


def row_owners(y: np.ndarray, batch_size: int, count: int) -> np.ndarray:
    """The shard of every sample (of its batch)."""
    return batch_owners(y, batch_size, count)[np.arange(len(y)) // batch_size]


def shard_class_counts(y: np.ndarray, batch_size: int, count: int, num_classes: int) -> np.ndarray:
    """``(count, num_classes)``: how many samples of each class every shard evaluates."""
    y = np.asarray(y)
    owner = row_owners(y, batch_size, count)
    return np.stack([np.bincount(y[owner == k], minlength=num_classes) for k in range(count)])


def merge_shard_flags(template: SampleFlags, out_dir: Path, count: int, flags_file: str) -> SampleFlags:
    """One flag file from the ``count`` shard files in ``out_dir``; ``template`` is the empty file of this evaluation.

    Every shard file must belong to this evaluation (same ``meta["static"]``,
    samples and attacks) and have finished the batches it owns; otherwise a
    one-line error names the shards still missing.  Rows come from the shard
    that owns their batch; the attack flags are united, the attack time summed
    and the out-of-memory halvings listed by batch.
    """
    merged = SampleFlags.empty(template.index, template.y, template.labels, {"static": template.meta["static"]})
    owner = row_owners(template.y, int(template.meta["static"]["batch_size"]), count)
    missing = []
    attack_flags: dict[str, dict] = {}
    halvings: list[dict] = []
    elapsed = 0.0
    for k, path in enumerate(shard_paths(out_dir, count, flags_file)):
        name = Shard(k, count).name
        rows = owner == k
        if not rows.any():
            continue
        if not path.exists():
            missing.append(f"{name} (not started)")
            continue
        part = SampleFlags.load(path)
        if part.meta.get("static") != template.meta["static"] or part.labels != template.labels \
                or not np.array_equal(part.index, template.index) or not np.array_equal(part.y, template.y):
            raise RfbenchError(f"{path} belongs to a different evaluation than this merge; remove "
                               f"{Path(out_dir) / 'shard-*'} or use another --out")
        if not part.done[rows].all():
            missing.append(f"{name} ({int(part.done[rows].sum())} of {int(rows.sum())} samples)")
            continue
        for key in ("clean_pred", "adv_pred", "ran", "pert", "done"):
            getattr(merged, key)[rows] = getattr(part, key)[rows]
        for lab, f in part.meta.get("attack_flags", {}).items():
            attack_flags.setdefault(lab, {}).update(f)
        halvings += part.meta.get("oom_halvings", [])
        elapsed += float(part.meta.get("elapsed_s", 0.0))
    if missing:
        raise ShardsIncomplete(f"cannot merge the {count} shards in {out_dir} yet: unfinished {', '.join(missing)}; "
                               "run them (rfbench eval ... --shard K/N), then merge (--shards N --merge)")
    merged.meta["attack_flags"] = attack_flags
    merged.meta["elapsed_s"] = elapsed
    if halvings:
        merged.meta["oom_halvings"] = sorted(halvings, key=lambda h: (h["batch"], -h["from"]))
    merged.meta["shards"] = count
    return merged


class ShardsIncomplete(RfbenchError):
    """A merge was asked for while some shard has not finished its batches."""
