"""``rfbench leaderboard compare RUN_DIR --track T``: does a rerun reproduce the committed entries?

A maintainer (or CI) reruns a defense on a track with ``rfbench run`` and asks
whether the result agrees with the entries already on the board for the same
defense and defense arguments.  For each reported number ``x`` (mean robust
accuracy, worst-class robust accuracy, clean accuracy; worst case over the
track's attacks, on the ranked checkpoint) the comparison is

    |x_new - mean(x_committed)| <= k * sigma * sqrt(1 + 1/m)

with ``m`` committed seeds and ``sigma = max(sigma_seed, sigma_test)``:

- ``sigma_seed``: the sample standard deviation over the ``m`` committed seeds
  (needs ``m >= 2``; the spread that retraining with another seed causes);
- ``sigma_test``: the binomial standard deviation ``sqrt(q (1 - q) / n)`` of
  one run's accuracy measured on ``n`` test images (``n`` = all evaluated
  images for a mean, the worst class's images for the worst class), with the
  Agresti-Coull estimate ``q = (p n + 2) / (n + 4)`` so that an accuracy of 0
  or 1 still has a spread.  It is a floor, so that one committed seed, or
  seeds that happen to agree, do not demand an impossible match.

``sqrt(1 + 1/m)`` turns the spread of one run into the spread of the
difference between one new run and the mean of ``m`` runs; ``k`` defaults to
2 (about a 95% band for each number).  A rerun with a committed seed on the
same kind of machine is usually bit-identical; the report says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from rfbench.benchmark.leaderboard.check import check_entry, check_entry_file
from rfbench.benchmark.leaderboard.schema import Entry, EntryError, Track
from rfbench.benchmark.leaderboard.submit import entry_from_run
from rfbench.core.errors import RfbenchError

#: (row label, summary block, summary field) of every compared number
METRICS = (("mean robust", "worst_case", "mean"), ("worst-class robust", "worst_case", "worst"),
           ("clean", "clean", "mean"))


@dataclass(frozen=True)
class Comparison:
    """One compared number; accuracies are fractions."""

    metric: str
    ours: float
    committed: tuple[float, ...]  # one value per committed seed
    sigma_seed: float | None  # None with fewer than two committed seeds
    sigma_test: float
    tolerance: float

    @property
    def reference(self) -> float:
        return statistics.fmean(self.committed)

    @property
    def diff(self) -> float:
        return self.ours - self.reference

    @property
    def ok(self) -> bool:
        return abs(self.diff) <= self.tolerance + 1e-12


@dataclass(frozen=True)
class Report:
    run_dir: Path
    track: str
    defense: str
    checkpoint: str
    seed: int
    committed: tuple[Entry, ...]
    rows: tuple[Comparison, ...]
    k: float
    same_seed_identical: bool | None  # None: no committed entry has the run's seed

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def tolerance(values: list[float], p: float, n: int, k: float) -> tuple[float | None, float, float]:
    """``(sigma_seed, sigma_test, tolerance)`` for a new value against ``values`` (module docstring)."""
    if not values:
        raise ValueError("no committed values to compare with")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    sigma_seed = statistics.stdev(values) if len(values) >= 2 else None
    q = (p * n + 2.0) / (n + 4.0)  # Agresti-Coull: never 0 or 1
    sigma_test = math.sqrt(q * (1.0 - q) / n)
    sigma = max(sigma_seed or 0.0, sigma_test)
    return sigma_seed, sigma_test, k * sigma * math.sqrt(1.0 + 1.0 / len(values))


def _same_setting(entry: Entry, defense: str, args: dict) -> bool:
    return entry.defense.name == defense and (entry.defense.args or {}) == (args or {})


def committed_entries(track: Track, root: Path, defense: str, args: dict) -> list[Entry]:
    """The track's entries (each passing ``check``) for ``defense`` with the same defense arguments."""
    out = []
    for path in sorted(track.path.parent.glob("*.json")):
        try:
            entry = check_entry_file(path, root)
        except EntryError:
            continue  # a rejected entry is no reference; `rfbench leaderboard check` reports it
        if _same_setting(entry, defense, args):
            out.append(entry)
    return out


def compare_run(run_dir: str | Path, track: Track, root: Path, *, k: float = 2.0) -> Report:
    """Compare a finished ``rfbench run`` of ``track`` with the committed entries of the same defense."""
    if k <= 0:
        raise RfbenchError(f"k must be positive, got {k}")
    run_dir = Path(run_dir)
    config_path = run_dir / "train" / "config.yaml"
    if not (run_dir / "result.json").is_file() or not config_path.is_file():
        raise RfbenchError(f"{run_dir} holds no finished run (no result.json or train/config.yaml); "
                           "run `rfbench run` to the end first")
    train_cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    defense, args = train_cfg["defense"], train_cfg.get("defense_args") or {}
    committed = committed_entries(track, root, defense, args)
    if not committed:
        raise RfbenchError(f"track {track.id} has no committed entry for defense '{defense}' with these "
                           "defense arguments; nothing to compare with (submit the run instead)")
    # the rerun is of the committed entries' code; the entry built here is checked, never written
    data, flags = entry_from_run(run_dir, track, root, code=committed[0].defense.code)
    ours = check_entry(data, where=f"run {run_dir}", root=root, track=track, flags=flags)
    ck = track.info.protocol.checkpoint
    ev = ours.evaluation(ck)
    n_all = sum(ev.n_per_class)
    rows = []
    for label, block, field in METRICS:
        value = float(ev.summary[block][field])
        values = [float(e.evaluation(ck).summary[block][field]) for e in committed]
        n = ev.n_per_class[ev.summary[block]["worst_class"]] if field == "worst" else n_all
        s_seed, s_test, tol = tolerance(values, statistics.fmean(values), n, k)
        rows.append(Comparison(label, value, tuple(values), s_seed, s_test, tol))
    same = [e for e in committed if e.seed == ours.seed]
    identical = None
    if same:
        mine, theirs = ev.per_class, same[0].evaluation(ck).per_class
        identical = all(mine[name] == theirs.get(name) for name in mine)
    return Report(run_dir, track.id, ours.defense.name, ck, ours.seed, tuple(committed), tuple(rows), k, identical)


def render(report: Report) -> str:
    """Markdown report: one row per number, in percent."""
    from tabulate import tabulate

    from rfbench.core.perclass import pct

    rows = [[r.metric, pct(r.ours), pct(r.reference), ", ".join(pct(v) for v in r.committed), pct(r.diff, sign=True),
             pct(r.sigma_seed), pct(r.sigma_test), f"±{pct(r.tolerance)}", "within" if r.ok else "OUTSIDE"]
            for r in report.rows]
    seeds = ", ".join(f"{e.id} (seed {e.seed})" for e in report.committed)
    lines = [
        f"Run {report.run_dir} (defense {report.defense}, seed {report.seed}) against track {report.track}, "
        f"`{report.checkpoint}` checkpoint; committed entries: {seeds}.", "",
        tabulate(rows, headers=["number (%)", "this run", "committed mean", "committed", "diff", "sd seeds",
                                "sd test", f"tolerance (k={report.k:g})", "verdict"], tablefmt="github"), "",
    ]
    if report.same_seed_identical is not None:
        lines.append(f"Same seed as a committed entry: per-class results "
                     f"{'identical' if report.same_seed_identical else 'differ (another machine or library version?)'}.")
    lines.append("REPRODUCED: every number within tolerance." if report.ok
                 else "NOT REPRODUCED: a number is outside the tolerance.")
    return "\n".join(lines)
