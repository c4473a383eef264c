"""``rfbench reproduce TABLE``: run a paper table's grid and set our numbers beside the published ones.

A table definition (``leaderboards/papers/<table>.yaml``, schema ``rfbench.paper-table/1``)::

    id: cfa-table1
    title: ...
    source: "Wei et al., CVPR 2023 (CFA), Table 1"       # every number names its paper and table
    settings: "PreAct-ResNet-18, 200 epochs, AutoAttack standard, mean ± std over 5 runs"
    tolerance: {mean: 2.0, worst: 4.0}                    # points (fractions once loaded); worst-class numbers have large seed variance
    seeds: [0, 1, 2, 3, 4]
    run: {train: {...}, eval: {attacks: ["autoattack:version=standard,label=aa"]}, checkpoints: [best, last]}
    columns:                                              # what the paper reports
      - {id: best-aa, label: best AA, checkpoint: best, metric: aa, stats: [mean, worst]}
    rows:
      - id: pgd-at
        label: PGD-AT
        run: {train: {defense: pgd-at}}                    # merged over the table's run
        published: {best-aa: {mean: 46.7, worst: 20.1}}  # percent, as printed (fractions once loaded)
        source: ...                                       # optional: a second-hand number's own source
        comparable: true                                  # false: a different protocol; verdicts are indicative
    smoke:                                                # --scale smoke: the same table on Fashion-MNIST, CPU
      seeds: [0]
      run: {train: {dataset: fashion-mnist, model: smallcnn, epochs: 1, ...}, eval: {...}}

``metric`` is a name of the result: ``clean``, ``worst_case`` or an attack
label (the table's specs set ``label=`` so the smoke scale keeps the names).
Verdicts per cell: ``within`` / ``outside`` the tolerance, ``indicative: ...``
where the published number was measured under another protocol, ``n/a
(smoke scale)`` at smoke scale (Fashion-MNIST numbers are not comparable with
CIFAR ones: the smoke scale tests the path, not the paper), ``not run``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rfbench.benchmark.runner.config import RunConfig, deep_merge, resolve_run, slug
from rfbench.benchmark.runner.cost import Throughput, run_cost, throughput
from rfbench.benchmark.runner.executors import EXECUTORS, Cell, CellOutcome, ExecutorOptions
from rfbench.benchmark.runner.summary import mean_std
from rfbench.core.config import choice, from_dict, load_yaml, to_dict
from rfbench.core.errors import ConfigError
from rfbench.core.io import atomic_write_json, atomic_write_text, read_json
from rfbench.core.perclass import pct

log = logging.getLogger(__name__)

TABLE_SCHEMA = "rfbench.paper-table/1"
STATS = ("mean", "worst")


@dataclass
class Column:
    id: str
    label: str
    metric: str  # clean, worst_case, or an attack label
    checkpoint: str = "best"
    stats: list[str] = field(default_factory=lambda: ["mean", "worst"])

    def validate(self) -> None:
        bad = [s for s in self.stats if s not in STATS]
        if bad:
            raise ConfigError(f"column {self.id}: stats must be among {', '.join(STATS)}, got {bad}")


@dataclass
class Row:
    id: str
    label: str
    published: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    comparable: bool = True
    note: str = ""


@dataclass
class SmokeScale:
    run: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    rows: dict[str, Any] = field(default_factory=dict)  # row id -> run overrides at smoke scale


@dataclass
class PaperTable:
    id: str
    title: str
    source: str
    run: dict[str, Any]
    columns: list[Column]
    rows: list[Row]
    schema: str = field(default=TABLE_SCHEMA, metadata=choice(TABLE_SCHEMA))
    settings: str = ""
    notes: list[str] = field(default_factory=list)
    tolerance: dict[str, float] = field(default_factory=lambda: {"mean": 2.0, "worst": 4.0})
    seeds: list[int] = field(default_factory=lambda: [0])
    smoke: SmokeScale = field(default_factory=SmokeScale)

    def validate(self) -> None:
        cols = {c.id for c in self.columns}
        for r in self.rows:
            for cid, cell in r.published.items():
                if cid not in cols:
                    raise ConfigError(f"table {self.id}: row {r.id} publishes unknown column '{cid}'")
                if not isinstance(cell, dict) or set(cell) - set(STATS):
                    raise ConfigError(f"table {self.id}: row {r.id}, column {cid}: expected {{mean: .., worst: ..}}")
        unknown = set(self.smoke.rows) - {r.id for r in self.rows}
        if unknown:
            raise ConfigError(f"table {self.id}: smoke.rows names unknown rows {sorted(unknown)}")
        if set(self.tolerance) != set(STATS):
            raise ConfigError(f"table {self.id}: tolerance must give {', '.join(STATS)}")


def table_path(name: str, root: Path) -> Path:
    """``cfa-table1`` -> ``leaderboards/papers/cfa-table1.yaml`` (a path is taken as is)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        return p
    path = root / "leaderboards" / "papers" / f"{name}.yaml"
    if not path.exists():
        valid = ", ".join(sorted(q.stem for q in (root / "leaderboards" / "papers").glob("*.yaml")))
        raise ConfigError(f"unknown table '{name}'; valid tables: {valid}")
    return path


def load_table(path: str | Path) -> PaperTable:
    """Load a table definition; its published numbers and tolerances, percentages (points) in the file as the
    paper prints them, become fractions here, the one place they are converted: everything after compares
    fractions, and only :func:`comparison_markdown` renders percentages."""
    table = from_dict(PaperTable, load_yaml(path), where=str(path))
    for row in table.rows:
        row.published = {cid: {stat: None if v is None else float(v) / 100 for stat, v in cell.items()}
                         for cid, cell in row.published.items()}
    table.tolerance = {stat: float(v) / 100 for stat, v in table.tolerance.items()}
    return table


def table_cells(table: PaperTable, scale: str, out: Path, *, rows: list[str] | None = None, seeds: list[int] | None = None,
                device: str | None = None, overrides: list[str] | None = None) -> list[Cell]:
    """One cell per (row, seed); at smoke scale the table's ``smoke`` overrides apply."""
    base = table.run
    if scale == "smoke":
        base = deep_merge(base, table.smoke.run)
    seeds = seeds or (table.smoke.seeds if scale == "smoke" else table.seeds)
    chosen = [r for r in table.rows if not rows or r.id in rows]
    if rows and len(chosen) != len(rows):
        raise ConfigError(f"unknown rows {sorted(set(rows) - {r.id for r in table.rows})}; valid: "
                          f"{', '.join(r.id for r in table.rows)}")
    cells = []
    for row in chosen:
        data = deep_merge(base, row.run)
        if scale == "smoke":
            data = deep_merge(data, table.smoke.rows.get(row.id))
        data.setdefault("name", f"{table.id}-{row.id}")
        run_cfg = from_dict(RunConfig, data, where=f"table {table.id} row {row.id}")
        for seed in seeds:
            run = resolve_run(run_cfg, seed=seed, out=out / slug(row.id) / f"seed{seed}", device=device,
                              overrides=overrides, quiet=True)
            cells.append(Cell(key={"row": row.id, "seed": seed}, run=run))
    return cells


def dry_run_text(table: PaperTable, cells: list[Cell], scale: str, tflops: float | None) -> str:
    """The grid and its estimated cost (FLOP counts from performance.md, the stated throughput)."""
    rows = []
    total = 0.0
    for c in cells:
        cost = run_cost(c.run)
        total += cost.total
        t = c.run.train
        rows.append({"row": c.key["row"], "seed": c.key["seed"], "defense": t.defense, "dataset": t.dataset,
                     "model": t.model, "epochs": t.epochs + (c.run.pretrain.epochs if c.run.pretrain else 0),
                     "attacks": ", ".join(str(a) for a in c.run.eval.attacks) or "(default suite)",
                     "train TFLOP": cost.train_flop / 1e12, "eval TFLOP": cost.eval_flop / 1e12, "out": str(c.run.out)})
    device = "cuda" if scale == "full" else "cpu"
    tput = Throughput(tflops, tflops, "given: --throughput") if tflops else throughput(device)
    hours = [total / (t * 1e12) / 3600 for t in (tput.high, tput.low)]
    unit = "GPU-hours" if device == "cuda" else "CPU-hours"
    head = f"{table.title} ({scale} scale): {len(cells)} runs\nsource: {table.source}\n"
    span = (f"{hours[0]:.3g} {unit} ({60 * hours[0]:.3g} min)" if hours[0] == hours[1] else
            f"{hours[0]:.3g}-{hours[1]:.3g} {unit} ({60 * hours[0]:.3g}-{60 * hours[1]:.3g} min)")
    rate = f"{tput.low:g}" if tput.low == tput.high else f"{tput.low:g}-{tput.high:g}"
    foot = (f"\nestimated cost: {total / 1e15:.4g} PFLOP = {span} at {rate} TFLOP/s ({tput.source}; "
            "AutoAttack counted on every point, so an upper bound)")
    return head + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g") + foot


def _ours(outcomes: list[CellOutcome]) -> dict[str, list[dict[str, Any]]]:
    by_row: dict[str, list[dict[str, Any]]] = {}
    for o in outcomes:
        if o.ok and (Path(o.out) / "result.json").exists():
            by_row.setdefault(o.key["row"], []).append(read_json(Path(o.out) / "result.json"))
    return by_row


def verdict(diff: float | None, tol: float, scale: str, comparable: bool) -> str:
    """Per-cell verdict (see the module docstring)."""
    if diff is None:
        return "not run"
    if scale == "smoke":
        return "n/a (smoke scale)"
    inside = "within" if abs(diff) <= tol else "outside"
    return inside if comparable else f"indicative: {inside}"


def compare(table: PaperTable, outcomes: list[CellOutcome], scale: str) -> list[dict[str, Any]]:
    """One record per (row, column, stat): ours (mean ± std over seeds), published, difference, verdict."""
    ours = _ours(outcomes)
    records = []
    for row in table.rows:
        results = ours.get(row.id, [])
        if not results and row.id not in {o.key["row"] for o in outcomes}:
            continue
        for col in table.columns:
            for stat in col.stats:
                vals = []
                for res in results:
                    block = res["checkpoints"].get(col.checkpoint)
                    if block is None or col.metric not in block["summary"]:
                        raise ConfigError(f"table {table.id}: column {col.id} needs '{col.metric}' at checkpoint "
                                          f"'{col.checkpoint}', which the run of row {row.id} did not produce")
                    vals.append(block["summary"][col.metric][stat])
                mean, std = mean_std(vals) if vals else (None, None)
                pub = row.published.get(col.id, {}).get(stat)
                diff = mean - pub if (mean is not None and pub is not None) else None
                records.append({
                    "row": row.id, "method": row.label, "column": col.label, "stat": stat,
                    "ours": mean, "ours_std": std, "seeds": len(vals), "published": pub, "diff": diff,
                    "tolerance": table.tolerance[stat],
                    "verdict": verdict(diff, table.tolerance[stat], scale, row.comparable) if pub is not None
                    else ("not published" if mean is not None else "not run"),
                    "source": row.source or table.source,
                })
    return records


def comparison_markdown(table: PaperTable, records: list[dict[str, Any]], scale: str) -> str:
    def num(v: float | None, std: float | None = None) -> str:
        if v is None:
            return "-"
        return pct(v) + (f" ± {pct(std)}" if std else "")

    rows = [{"method": r["method"], "column": r["column"], "stat": r["stat"], "ours": num(r["ours"], r["ours_std"]),
             "seeds": r["seeds"], "published": pct(r["published"]), "diff": pct(r["diff"], sign=True),
             "tol": f"±{pct(r['tolerance'])}",
             "verdict": r["verdict"]} for r in records]
    sources = sorted({r["source"] for r in records})
    lines = [f"# {table.title}" + (" — smoke scale (Fashion-MNIST, CPU)" if scale == "smoke" else ""), "",
             f"Settings: {table.settings}", "",
             pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else "(no runs)", "",
             "Accuracies in percent (mean ± sample std over seeds); diff = ours − published; verdict: within the "
             f"tolerance (±{pct(table.tolerance['mean'])} points on averages, ±{pct(table.tolerance['worst'])} on worst-class "
             "numbers) or not.", "", "Sources:"] + [f"- {s}" for s in sources]
    if table.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in table.notes]
    if scale == "smoke":
        lines += ["", "At smoke scale the runs use Fashion-MNIST and a tiny budget: the published CIFAR numbers are "
                  "shown for layout only, and no verdict is given."]
    return "\n".join(lines) + "\n"


def reproduce(table: PaperTable, cells: list[Cell], scale: str, out: Path, executor: str,
              opts: ExecutorOptions) -> tuple[list[dict[str, Any]], str]:
    """Run the cells, then write ``comparison.md`` and ``comparison.json`` into ``out``."""
    outcomes = EXECUTORS.get(executor)(cells, opts)
    for o in outcomes:
        if not o.ok:
            log.error("row %s seed %s failed: %s", o.key["row"], o.key["seed"], o.error)
    records = compare(table, outcomes, scale)
    md = comparison_markdown(table, records, scale)
    atomic_write_text(out / "comparison.md", md)
    atomic_write_json(out / "comparison.json", {
        "table": table.id, "title": table.title, "scale": scale, "source": table.source, "settings": table.settings,
        "tolerance": table.tolerance, "cells": records, "runs": [o.__dict__ for o in outcomes],
        "definition": to_dict(table)})
    return records, md
