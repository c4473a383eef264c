"""Benchmark runs, sweeps, paper-table reproduction and the CI smoke benchmark.

* :mod:`~rfbench.benchmark.runner.config`: run configs (a track or a table cell) and their resolution;
* :mod:`~rfbench.benchmark.runner.run`: ``rfbench run`` (train -> select -> evaluate -> report, resumable);
* :mod:`~rfbench.benchmark.runner.sweep` and :mod:`~rfbench.benchmark.runner.executors`: ``rfbench sweep`` (local or Ray);
* :mod:`~rfbench.benchmark.runner.summary`: seeds aggregated into mean ± std;
* :mod:`~rfbench.benchmark.runner.reproduce` and :mod:`~rfbench.benchmark.runner.cost`: ``rfbench reproduce`` and its cost estimate;
* :mod:`~rfbench.benchmark.runner.smoke`: ``rfbench smoke``.

Example::

    from rfbench.benchmark.runner import execute_run, load_run_config, resolve_run
    run_dir = execute_run(resolve_run(load_run_config("leaderboards/fashion-mnist-linf/track.yaml"), defense="pgd-at"))

The names below load their module (and torch) on first use, so that the command line's parsers,
which read the executor registry, start fast.
"""

from importlib import import_module
from typing import Any

_HOME = {"ResolvedRun": "config", "RunConfig": "config", "load_run_config": "config", "resolve_run": "config",
         "execute_run": "run", "is_finished": "run"}

__all__ = ["ResolvedRun", "RunConfig", "execute_run", "is_finished", "load_run_config", "resolve_run"]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(f"rfbench.benchmark.runner.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
