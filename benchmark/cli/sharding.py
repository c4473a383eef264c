"""The sharding options of ``rfbench eval`` and ``rfbench zoo``: which shard this process is, and Ray shards.

A shard comes from ``--shard K/N``, from a launcher's ``RANK``/``WORLD_SIZE``
(torchrun or any other), or is the merge step (``--shards N --merge``);
``--executor ray`` runs the N shards as Ray tasks through the runner's executor
and the command then merges (:mod:`rfbench.benchmark.eval.shard`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rfbench.core.errors import ConfigError

if TYPE_CHECKING:  # the parser is built without importing numpy and torch (rfbench --help stays fast)
    from rfbench.benchmark.eval.shard import Shard


def shard_of(args: argparse.Namespace) -> Shard | None:
    """This process's shard: ``--shard K/N``, the launcher's RANK/WORLD_SIZE, the merge step, or None."""
    from rfbench.benchmark.eval.shard import Shard, shard_from_env

    launched = shard_from_env()
    if args.shard and launched:
        raise ConfigError("--shard K/N and a launcher's RANK/WORLD_SIZE both give the shard; use one")
    if args.merge:
        if not args.shards or args.shard or launched:
            raise ConfigError("--merge needs --shards N (the number of shards to merge) and no --shard or launcher")
        return Shard(None, args.shards)
    if args.shard:
        return Shard.parse(args.shard)
    if launched and args.shards and args.shards != launched.count:
        raise ConfigError(f"--shards {args.shards} but the launcher started {launched.count} processes")
    return launched


def rank_device(device: Any, shard: Shard | None) -> str | None:
    """A CUDA rank of a launcher uses the GPU ``LOCAL_RANK`` (as torchrun's training does); None: keep ``device``."""
    if shard is None or shard.merging or device.type != "cuda" or device.index is not None or "LOCAL_RANK" not in os.environ:
        return None
    return f"cuda:{int(os.environ['LOCAL_RANK'])}"


def run_ray_shards(args: argparse.Namespace, out: Path, task: Callable[[argparse.Namespace, int, int], str],
                   path_keys: Iterable[str], what: str) -> None:
    """Run the ``--shards`` shards of ``args`` as Ray tasks (``task(args, k, n)``); the caller merges after.

    ``path_keys``: the arguments holding paths, made absolute so that the tasks find them from any node.
    """
    from rfbench.benchmark.runner.executors import ExecutorOptions, ray_map

    if not args.shards:
        raise ConfigError("--executor ray needs --shards N (the number of Ray tasks)")
    n, keys = args.shards, set(path_keys)
    ns = argparse.Namespace(**{k: (str(Path(v).resolve()) if k in keys and v else v) for k, v in vars(args).items()})
    ns.out = str(Path(out).resolve())
    device = getattr(args, "device", "auto")
    gpus = args.gpus_per_shard if args.gpus_per_shard is not None else (
        0.0 if device == "cpu" else 1.0 if device.startswith("cuda") else None)  # auto: 1 if the cluster has GPUs
    opts = ExecutorOptions(address=args.ray_address, quiet=bool(getattr(args, "quiet", False)))
    ray_map(task, [(ns, k, n) for k in range(n)], opts, gpus=gpus,
            labels=[f"{what} shard-{k}-of-{n}" for k in range(n)], desc=f"{what} shards (ray)")


def add_shard_arguments(p: argparse.ArgumentParser, what: str, merged: str) -> None:
    """The sharding group: ``--shard``, ``--shards``, ``--merge``, ``--executor``, ``--ray-address``, ``--gpus-per-shard``.

    ``what``: what one shard evaluates; ``merged``: what the merge writes.
    """
    sh = p.add_argument_group("sharding (see docs/evaluation.md)")
    sh.add_argument("--shard", metavar="K/N", help=f"evaluate only shard K (from 0) of N of {what}: about one whole batch "
                    "in N (dealt to keep the class shares), into OUT/shard-K-of-N/; the last shard to finish merges. "
                    "Under torchrun (or any launcher setting RANK and WORLD_SIZE) the shard is the rank")
    sh.add_argument("--shards", type=int, metavar="N", help="number of shards, for --merge and --executor ray")
    sh.add_argument("--merge", action="store_true", help=f"merge the N finished shards in --out into {merged}")
    sh.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="ray: run the --shards N shards as Ray tasks (the nodes share --out), then merge [default: local]")
    sh.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (auto, ray://host:10001) [default: a local Ray]")
    sh.add_argument("--gpus-per-shard", type=float, metavar="G", help="GPUs each Ray task asks for [default: 1 with "
                    "--device cuda, 0 with cpu, auto: 1 if the cluster has GPUs]")
