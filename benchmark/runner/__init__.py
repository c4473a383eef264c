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
"""

from rfbench.benchmark.runner.config import ResolvedRun, RunConfig, load_run_config, resolve_run
from rfbench.benchmark.runner.run import execute_run, is_finished

__all__ = ["ResolvedRun", "RunConfig", "execute_run", "is_finished", "load_run_config", "resolve_run"]
