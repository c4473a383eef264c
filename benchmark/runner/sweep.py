"""``rfbench sweep GRID.yaml``: defenses × datasets × seeds × override variants, then a mean ± std summary.

Grid file::

    base: leaderboards/fashion-mnist-linf/track.yaml   # a run config (path relative to the cwd, else to the grid file)
    run: {eval: {n_per_class: 20}}                      # optional inline run config, merged over `base`
    defenses: [pgd-at, trades]                          # [] = the base's train.defense
    datasets: [fashion-mnist, fashion-mnist-lt]         # [] = the base's train.dataset
    seeds: [0, 1, 2]
    overrides:                                          # named variants of key=value overrides; {} = one variant
      default: []
      short: [train.epochs=1]
    out: runs/sweep-fm

Each cell runs in ``OUT/<dataset>/<defense>/<variant>/seed<k>`` (a normal
``rfbench run`` directory: finished cells are skipped on rerun).  After the
executor is done, ``OUT/sweep.json`` lists the cells and their outcome, and
``OUT/summary.json`` / ``summary.md`` aggregate the seeds (see
:mod:`rfbench.benchmark.runner.summary`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfbench.benchmark.runner.config import RunConfig, deep_merge, load_run_config, resolve_run, slug
from rfbench.benchmark.runner.executors import EXECUTORS, Cell, CellOutcome, ExecutorOptions
from rfbench.benchmark.runner.summary import aggregate, per_run_frame, summary_markdown
from rfbench.core.config import from_dict, load_yaml, to_dict
from rfbench.core.errors import ConfigError
from rfbench.core.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

GROUP_KEYS = ["dataset", "defense", "variant"]


@dataclass
class GridConfig:
    """The YAML schema of ``rfbench sweep`` (see the module docstring)."""

    base: str | None = None
    run: dict[str, Any] = field(default_factory=dict)
    defenses: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/sweep"

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("grid: 'seeds' must list at least one seed")
        for key in ("seeds", "defenses", "datasets"):
            values = getattr(self, key)
            dups = sorted({str(v) for v in values if values.count(v) > 1})
            if dups:  # a repeated seed is one run, not two independent ones
                raise ConfigError(f"grid: '{key}' lists {', '.join(dups)} more than once; each value must appear once")
        for name, items in self.overrides.items():
            if not isinstance(items, list) or not all(isinstance(i, str) and "=" in i for i in items):
                raise ConfigError(f"grid: overrides.{name} must be a list of key=value strings")
        if not self.base:
            raise ConfigError("grid: 'base' is missing; name the run config every cell starts from "
                              "(e.g. base: leaderboards/fashion-mnist-linf/track.yaml)")


def _find(path: str, grid_path: Path | None) -> Path:
    p = Path(path)
    if p.exists() or p.is_absolute() or grid_path is None:
        return p
    beside = grid_path.parent / p
    return beside if beside.exists() else p


def load_grid(path: str | Path) -> GridConfig:
    return from_dict(GridConfig, load_yaml(path), where=str(path))


def base_run(grid: GridConfig, grid_path: Path | None = None) -> RunConfig:
    """The run config every cell starts from: ``base`` (a file) with ``run`` merged over it."""
    data = to_dict(load_run_config(_find(grid.base, grid_path))) if grid.base else {}
    return from_dict(RunConfig, deep_merge(data, grid.run), where="grid run")


def expand_grid(grid: GridConfig, grid_path: Path | None = None, *, device: str | None = None,
                extra_overrides: list[str] | None = None) -> list[Cell]:
    """The cells of the grid, in a fixed order (dataset, defense, variant, seed)."""
    base = base_run(grid, grid_path)
    if not grid.defenses and not base.train.get("defense"):
        raise ConfigError("grid: 'defenses' is empty and its base names no train.defense; list the defenses to run")
    defenses = grid.defenses or [base.train["defense"]]
    from rfbench.defenses.registry import check_defense_name

    for name in defenses:
        check_defense_name(name)
    datasets = grid.datasets or [base.train.get("dataset", "fashion-mnist")]
    variants = grid.overrides or {"default": []}
    cells = []
    seen: dict[Path, dict[str, Any]] = {}
    for dataset, defense, (variant, items), seed in itertools.product(datasets, defenses, variants.items(), grid.seeds):
        out = Path(grid.out) / slug(dataset) / slug(defense) / slug(variant) / f"seed{seed}"
        key = {"dataset": dataset, "defense": defense, "variant": variant, "seed": seed}
        if out in seen:  # two cells in one run directory: the second would always fail
            other = seen[out]
            what = next(k for k in ("dataset", "defense", "variant") if other[k] != key[k])
            raise ConfigError(f"grid: {what}s {other[what]!r} and {key[what]!r} map to the same run directory {out}; "
                              f"rename one (its directory name is taken from its last path component)")
        seen[out] = key
        run = resolve_run(base, defense=defense, seed=seed, out=out, device=device,
                          overrides=[f"train.dataset={dataset}", *items, *(extra_overrides or [])], quiet=True)
        cells.append(Cell(key=key, run=run))
    return cells


def run_cells(cells: list[Cell], executor: str, opts: ExecutorOptions) -> list[CellOutcome]:
    return EXECUTORS.get(executor)(cells, opts)


def write_summary(out: Path, outcomes: list[CellOutcome], group_keys: list[str]) -> tuple[list[dict[str, Any]], str]:
    """``sweep.json`` (cells and outcomes), ``summary.json`` and ``summary.md`` from the finished runs' files."""
    atomic_write_json(out / "sweep.json", [o.__dict__ for o in outcomes])
    per_run = per_run_frame((o.key, o.out) for o in outcomes if o.ok)
    groups = aggregate(per_run, group_keys)
    md = summary_markdown(groups, group_keys)
    atomic_write_json(out / "summary.json", {"group_keys": group_keys, "std": "sample (ddof=1) over seeds",
                                             "groups": groups})
    atomic_write_text(out / "summary.md", md + "\n")
    return groups, md


def run_sweep(grid: GridConfig, executor: str, opts: ExecutorOptions, grid_path: Path | None = None,
              device: str | None = None, extra_overrides: list[str] | None = None) -> tuple[list[CellOutcome], str]:
    """Expand, execute and summarise a grid; returns the outcomes and the markdown summary."""
    cells = expand_grid(grid, grid_path, device=device, extra_overrides=extra_overrides)
    log.info("sweep: %d runs with the %s executor -> %s", len(cells), executor, grid.out)
    outcomes = run_cells(cells, executor, opts)
    _, md = write_summary(Path(grid.out), outcomes, GROUP_KEYS)
    return outcomes, md
