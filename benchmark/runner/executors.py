"""Executors: how the cells of a sweep are run (``local`` one after another, or ``ray`` as Ray tasks).

An executor takes a list of :class:`Cell` and returns one :class:`CellOutcome`
per cell, in the same order.  Every cell writes its own run directory, so the
summary is computed from the files and does not depend on the executor.

* ``local``: in this process, one run after another, with an overall tqdm bar.
* ``ray``: each cell is a Ray task (Ray is an optional extra:
  ``pip install rfbench[ray]``).  ``address=None`` starts a local Ray;
  ``--ray-address auto`` or ``ray://host:10001`` joins a cluster, whose nodes
  must have rfbench installed and share the output directory.  Each task asks
  for ``gpus`` GPUs (1 when the run trains on CUDA, 0 on CPU) and ``cpus`` CPUs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from tqdm.auto import tqdm

from rfbench.core.errors import RfbenchError
from rfbench.core.registry import Registry

if TYPE_CHECKING:
    from rfbench.benchmark.runner.config import ResolvedRun

log = logging.getLogger(__name__)


@dataclass
class Cell:
    """One run of a sweep: its coordinates in the grid (``key``) and its resolved config."""

    key: dict[str, Any]
    run: ResolvedRun

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.key.items())


@dataclass
class CellOutcome:
    key: dict[str, Any]
    out: str
    ok: bool
    seconds: float
    error: str | None = None


@dataclass
class ExecutorOptions:
    force: bool = False
    quiet: bool = False
    address: str | None = None  # Ray: None = a local Ray
    num_cpus: int | None = None  # Ray: CPUs of the local Ray (None = all)
    gpus: float | None = None  # per run; None = 1 when the run trains on CUDA, else 0
    cpus: float = 1.0  # per run


EXECUTORS: Registry[Callable[[list[Cell], ExecutorOptions], list[CellOutcome]]] = Registry("executor")


def run_cell(run: ResolvedRun, key: dict[str, Any], force: bool, quiet: bool) -> CellOutcome:
    """Execute one cell, turning a failure into an outcome (one bad cell does not stop a sweep)."""
    from rfbench.benchmark.runner.run import execute_run

    t0 = time.monotonic()
    try:
        out = execute_run(run, force=force, quiet=quiet)
        return CellOutcome(key=key, out=str(out), ok=True, seconds=time.monotonic() - t0)
    except (RfbenchError, RuntimeError, ValueError, OSError) as exc:  # reported per cell, the sweep goes on
        log.debug("cell %s failed:\n%s", key, traceback.format_exc())
        return CellOutcome(key=key, out=str(run.out), ok=False, seconds=time.monotonic() - t0,
                           error=f"{type(exc).__name__}: {exc}")


@EXECUTORS.register("local", help="in this process, one run after another, with an overall progress bar")
def local_executor(cells: list[Cell], opts: ExecutorOptions) -> list[CellOutcome]:
    outcomes = []
    bar = tqdm(cells, desc="sweep", unit="run", disable=opts.quiet or not sys.stderr.isatty())
    for cell in bar:
        bar.set_postfix_str(cell.label, refresh=True)
        outcome = run_cell(cell.run, cell.key, opts.force, True)
        if not outcome.ok:
            log.error("%s failed: %s", cell.label, outcome.error)
        outcomes.append(outcome)
    return outcomes


def gpus_for(run: ResolvedRun, opts: ExecutorOptions, cluster_gpus: float) -> float:
    """GPUs a run asks Ray for: the explicit option, else 1 for a CUDA run (``auto`` when the cluster has GPUs), else 0."""
    if opts.gpus is not None:
        return opts.gpus
    device = run.train.device
    if device.startswith("cuda"):
        return 1.0
    return 1.0 if device == "auto" and cluster_gpus > 0 else 0.0


def _absolute(run: ResolvedRun) -> ResolvedRun:
    """The run with every path absolute (Ray workers may start in another directory)."""
    out = run.out.resolve()
    train = dataclasses.replace(run.train, out=str(out / "train"),
                                init=str(Path(run.train.init).resolve()) if run.train.init else None)
    pre = dataclasses.replace(run.pretrain, out=str(out / "pretrain")) if run.pretrain else None
    return dataclasses.replace(run, out=out, train=train, pretrain=pre, data={**run.data, "out": str(out)})


@contextlib.contextmanager
def ray_session(opts: ExecutorOptions) -> Iterator[Any]:
    """The ``ray`` module, connected: a local Ray (or the cluster at ``opts.address``) for the ``with`` block.

    A Ray already initialised in this process is used as it is and left running.
    """
    try:
        import ray
    except ImportError:
        raise RfbenchError("--executor ray needs Ray: pip install 'rfbench[ray]' (or pip install 'ray[default]')") from None
    started = False
    if not ray.is_initialized():
        repo = str(Path(__file__).resolve().parents[2])
        env = {"PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": not opts.quiet}
        if opts.address:
            kwargs["address"] = opts.address
        else:
            kwargs.update(num_cpus=opts.num_cpus, include_dashboard=False)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {opts.address}" if opts.address else "a local Ray"
            raise RfbenchError(f"could not start or join {where}: {str(exc).splitlines()[0]}") from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def ray_map(fn: Callable[..., Any], calls: list[tuple], opts: ExecutorOptions, *, gpus: float | None, labels: list[str],
            desc: str = "ray") -> list[Any]:
    """``[fn(*args) for args in calls]``, each call a Ray task asking for ``gpus`` GPUs and ``opts.cpus`` CPUs.

    ``gpus=None``: 1 when the cluster has GPUs, else 0.  Results come back in the
    order of ``calls``; ``fn`` must be importable by the workers (a module-level function).
    """
    with ray_session(opts) as ray:
        if gpus is None:
            gpus = 1.0 if float(ray.cluster_resources().get("GPU", 0)) > 0 else 0.0
        task = ray.remote(fn)
        pending = {task.options(num_gpus=gpus, num_cpus=opts.cpus, name=lab[:100]).remote(*args): i
                   for i, (args, lab) in enumerate(zip(calls, labels))}
        results: list[Any] = [None] * len(calls)
        with tqdm(total=len(calls), desc=desc, unit="task", disable=opts.quiet or not sys.stderr.isatty()) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    results[pending.pop(ref)] = ray.get(ref)
                    bar.update(1)
        return results


@EXECUTORS.register("ray", help="each run as a Ray task (local Ray by default, or --ray-address)")
def ray_executor(cells: list[Cell], opts: ExecutorOptions) -> list[CellOutcome]:
    with ray_session(opts) as ray:
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        task = ray.remote(run_cell)
        pending = {}
        for i, cell in enumerate(cells):
            gpus = gpus_for(cell.run, opts, cluster_gpus)
            ref = task.options(num_gpus=gpus, num_cpus=opts.cpus, name=cell.label[:100]).remote(
                _absolute(cell.run), cell.key, opts.force, True)
            pending[ref] = i
        outcomes: list[CellOutcome | None] = [None] * len(cells)
        with tqdm(total=len(cells), desc="sweep (ray)", unit="run", disable=opts.quiet or not sys.stderr.isatty()) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    outcome = ray.get(ref)
                    if not outcome.ok:
                        log.error("%s failed: %s", cells[i].label, outcome.error)
                    outcomes[i] = outcome
                    bar.update(1)
        return [o for o in outcomes if o is not None]
