"""Rank groups that are honest about noise, duplicate entries, and the worst class's binomial interval.

The rule (rfbench's own; stated on every leaderboard page by :data:`RULE`):

1. **Identical entries.** Two entries of a track whose per-sample predictions on
   the ranked checkpoint are equal (the clean prediction and every attack's
   adversarial prediction of every test image; the per-class vectors when an
   entry's flag file cannot be read) are one result counted twice.  One of them stays
   ranked, the *reference*: the entry of a track baseline (``track.baselines``,
   in that order), else of the defense with the most entries on the track, else
   the smallest id.  The others are shown as
   "identical to X" and are not ranked.  The reference is the entry that entered
   the repository first (:func:`rfbench.benchmark.leaderboard.history.first_added`,
   from git history: never from a field the submitter writes); among entries
   added by the same commit, or when there is no history, the rules above
   decide.  ``rfbench leaderboard submit`` refuses a new one (:func:`identical_to`).
2. **Two ranked metrics**, both on the worst case over the track's attacks:
   the worst-class robust accuracy, and the mean of the worst 20% of classes
   (``tail20``, :func:`rfbench.benchmark.eval.metrics.tail_mean`), so that a
   single class stuck near 0 does not decide everything.  A track may name a
   third, primary one (``primary_metric: tail``): the mean over its tail classes
   (``tail_classes``), ranked by the same test and sorted by first; the track's
   page says which classes and why (``primary_reason``).
3. **Significance of a difference.**  For entries ``i`` and ``j`` and a metric
   ``m``, ``d = m_i - m_j``.  Its test-set variance ``v_test`` is the variance
   of ``d`` over a *paired*, class-stratified bootstrap of the test images:
   each resample draws, within every class, that class's test images with
   replacement and evaluates both entries on the *same* draw (the per-sample
   worst-case flags), so what the two entries share cancels.  An entry without
   a usable flag file is resampled from its per-class counts instead (binomial,
   unpaired).  The seed variance ``s^2`` is the pooled sample variance of
   ``m`` over the seeds of every defense with at least two seeds on the track
   (``sum (n_d - 1) s_d^2 / sum (n_d - 1)``), assumed for every entry, since
   one run of any defense is as much a draw of its training randomness as one
   run of those; it is 0 when no defense has two seeds.  ``i`` is
   **significantly better** than ``j`` when ``d > z * sqrt(v_test + 2 s^2)``
   (``z = 1.96``, two-sided 5% for each pair; no correction for multiple
   comparisons).
4. **Rank group** of an entry = 1 + the number of entries significantly better
   than it.  Entries with the same number share a rank; rank 1 holds every
   entry that nothing beats significantly.

The worst-class interval is the one rfbench defines for ``min_k p_k``
(:func:`rfbench.core.perclass.worst_class_interval`, ``docs/evaluation.md``,
"Definitions"): every class with test images gets a Wilson score interval
(Wilson, "Probable inference, the law of succession, and statistical
inference", JASA 1927) at level ``1 - 0.05/C`` (Bonferroni), and the interval is
``[min_k lo_k, min_k hi_k]``, so it covers the minimum over classes with
probability >= 95%, not only the accuracy of the class that came out worst.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rfbench.benchmark.eval.metrics import TAIL_FRACTION
from rfbench.benchmark.leaderboard.paths import UnsafePathError, safe_repo_path
from rfbench.benchmark.leaderboard.schema import Entry
from rfbench.core.perclass import worst_class_interval_from_counts

#: z of a two-sided 5% test (and of a 95% interval)
Z95 = 1.959963984540054
N_BOOT = 2000
BOOT_SEED = 0
#: (key, heading) of the ranked metrics, in the order the table sorts by unless the track names another first
METRICS = (("worst", "worst-class robust"), ("tail20", "worst-20% robust"))
#: a long-tailed track's primary metric (``primary_metric: tail``): the mean over its tail classes
TAIL_METRIC = ("tail", "tail-classes robust")

RULE = (
    "Rank groups (rfbench's rule): the ranked metrics are the worst-class robust accuracy and the mean of the worst "
    "20% of classes, both under the worst case over the track's attacks. Entry i is significantly better than j "
    "when the difference d exceeds 1.96 * sqrt(v_test + 2 s^2): v_test is the variance of d over a paired, "
    "class-stratified bootstrap of the test images (both entries scored on the same resampled images, from their "
    f"per-sample flags; {N_BOOT} resamples), s^2 the pooled variance over seeds of the defenses with at least two "
    "seeds on the track. An entry's rank is 1 + the number of entries significantly better than it, so entries "
    "that are not significantly different share a rank. Pairwise 5% tests, no correction for multiple comparisons. "
    "Entries whose per-sample predictions equal another entry's are one result counted twice: they are marked "
    "\"identical to X\" and not ranked. The 95% interval is that of the worst-class accuracy min_k p_k: each "
    "class gets a Wilson interval at level 1 - 0.05/C (Bonferroni, C classes with test images), and the interval "
    "is [min_k lo_k, min_k hi_k]."
)


# -- per-sample data of one entry --------------------------------------------------------------------------------
@dataclass
class EntryData:
    """What ranking needs from one entry's ranked checkpoint."""

    entry: Entry
    n_per_class: list[int]
    per_class: np.ndarray  # (C,) worst-case robust accuracy
    index: np.ndarray | None = None  # (N,) test-set positions, sorted; None without a usable flag file
    y: np.ndarray | None = None  # (N,) labels in that order
    robust: np.ndarray | None = None  # (N,) worst-case robust flags in that order
    signature: str = ""  # hash of every per-sample prediction (or of the per-class vectors without flags)

    @property
    def id(self) -> str:
        return self.entry.id


def entry_data(entry: Entry, checkpoint: str, root: Path, flags_path: Path | None = None) -> EntryData:
    """Load the ranked checkpoint's flags of ``entry`` (``flags_path``, else its flag file inside ``root``, if readable)."""
    from rfbench.benchmark.leaderboard.evidence import read_flags
    from rfbench.core.errors import RfbenchError

    ev = entry.evaluation(checkpoint)
    data = EntryData(entry=entry, n_per_class=list(ev.n_per_class),
                     per_class=np.asarray(ev.per_class["worst_case"], dtype=float))
    flags = None
    if flags_path is not None or ev.flags_file is not None:
        try:
            path = flags_path or safe_repo_path(ev.flags_file, root, "flags_file")
            flags = read_flags(Path(path), sum(ev.n_per_class), len(ev.attacks))  # bounded by the checked counts
        except (RfbenchError, UnsafePathError):
            flags = None
    if flags is not None and sorted(flags.labels) == sorted(ev.attacks):
        order = np.argsort(flags.index, kind="stable")
        data.index, data.y = flags.index[order], flags.y[order]
        data.robust = flags.worst_case(list(ev.worst_case_over))[order]
        cols = [flags.labels.index(a) for a in sorted(flags.labels)]
        adv = np.where(flags.ran, flags.adv_pred, -1)[order][:, cols]
        h = hashlib.sha256()
        for arr in (data.index, data.y, flags.clean_pred[order], adv):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update("\0".join(sorted(flags.labels)).encode())
        data.signature = "flags:" + h.hexdigest()
    else:
        h = hashlib.sha256()
        for name in sorted(ev.per_class):
            h.update(name.encode() + np.asarray(ev.per_class[name], dtype=float).tobytes())
        h.update(np.asarray(ev.n_per_class, dtype=np.int64).tobytes())
        data.signature = "per-class:" + h.hexdigest()
    return data


# -- identical entries -------------------------------------------------------------------------------------------
def _reference_key(e: Entry, baselines: Sequence[str], n_entries: dict[str, int], order: dict[str, int]) -> tuple:
    base = baselines.index(e.defense.name) if e.defense.name in baselines else len(baselines)
    return (order.get(e.id, math.inf), base, -n_entries.get(e.defense.name, 0), e.id)


def duplicates(data: Sequence[EntryData], baselines: Sequence[str] = (),
               order: dict[str, int] | None = None) -> dict[str, str]:
    """``{entry id: id of the reference entry it is identical to}`` for every non-reference member of a group.

    ``order`` gives each entry's position in the repository's history (:mod:`~rfbench.benchmark.leaderboard.history`):
    the first one is the reference, a later one the copy.
    """
    order = order or {}
    n_entries: dict[str, int] = {}
    for d in data:
        n_entries[d.entry.defense.name] = n_entries.get(d.entry.defense.name, 0) + 1
    groups: dict[str, list[EntryData]] = {}
    for d in data:
        groups.setdefault(d.signature, []).append(d)
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        ref = min(members, key=lambda d: _reference_key(d.entry, baselines, n_entries, order))
        out.update({d.id: ref.id for d in members if d is not ref})
    return out


def identical_to(new: EntryData, committed: Sequence[EntryData]) -> EntryData | None:
    """The committed entry whose per-sample predictions equal ``new``'s (another id), if any."""
    return next((d for d in committed if d.id != new.id and d.signature == new.signature), None)


# -- significance and rank groups --------------------------------------------------------------------------------
def metric_value(acc: np.ndarray, key: str, tail_classes: Sequence[int] = ()) -> np.ndarray:
    """``worst`` (min over classes), ``tail20`` (mean of the worst ceil(0.2 C) classes) or ``tail`` (mean over
    ``tail_classes``) along the last axis."""
    acc = np.asarray(acc, dtype=float)
    if key == "tail":
        return acc[..., list(tail_classes)].mean(axis=-1)
    if key == "worst":
        return acc.min(axis=-1)
    if key == "tail20":
        k = max(1, math.ceil(TAIL_FRACTION * acc.shape[-1]))
        return np.sort(acc, axis=-1)[..., :k].mean(axis=-1)
    raise ValueError(f"unknown ranked metric '{key}'")


def bootstrap_class_accuracies(data: Sequence[EntryData], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """``(E, B, C)`` per-class worst-case accuracies of every entry on ``B`` paired, class-stratified resamples.

    Entries whose flags cover the same test images as the first such entry share
    the resampled image indices (paired); the others are drawn from their counts.
    """
    rng = np.random.default_rng(seed)
    C = len(data[0].n_per_class)
    out = np.empty((len(data), n_boot, C))
    ref = next((d for d in data if d.index is not None), None)
    paired = [d.index is not None and ref is not None and np.array_equal(d.index, ref.index)
              and np.array_equal(d.y, ref.y) for d in data]
    for c in range(C):
        if ref is not None:
            members = np.flatnonzero(ref.y == c)
            draw = rng.integers(0, len(members), size=(n_boot, len(members))) if len(members) else None
        for e, d in enumerate(data):
            if paired[e] and draw is not None:
                out[e, :, c] = d.robust[members][draw].mean(axis=1)
            else:
                n = d.n_per_class[c]
                out[e, :, c] = rng.binomial(n, d.per_class[c], size=n_boot) / n
    return out


def pooled_seed_variance(values: dict[str, float], setting_of: dict[str, tuple]) -> float:
    """Pooled sample variance over the seeds of every setting (defense + args) with at least two entries; 0 if none."""
    by_setting: dict[tuple, list[float]] = {}
    for eid, v in values.items():
        by_setting.setdefault(setting_of[eid], []).append(v)
    num = den = 0.0
    for vs in by_setting.values():
        if len(vs) >= 2:
            num += (len(vs) - 1) * statistics.variance(vs)
            den += len(vs) - 1
    return num / den if den else 0.0


def significantly_better(values: np.ndarray, boot: np.ndarray, seed_var: float, z: float = Z95) -> np.ndarray:
    """``better[i, j]``: entry i significantly better than j (``values`` (E,), ``boot`` (E, B) paired draws)."""
    E = len(values)
    better = np.zeros((E, E), dtype=bool)
    for i in range(E):
        for j in range(E):
            if i == j:
                continue
            d = float(values[i] - values[j])
            v = float(np.var(boot[i] - boot[j])) + 2.0 * seed_var
            better[i, j] = d > 0 and d > z * math.sqrt(v) + 1e-12
    return better


def rank_groups(better: np.ndarray) -> list[int]:
    """Rank of each entry = 1 + the number of entries significantly better than it."""
    better = np.asarray(better, dtype=bool)
    return [1 + int(better[:, j].sum()) for j in range(better.shape[0])]


# -- the ranking of a track --------------------------------------------------------------------------------------
@dataclass
class RankedEntry:
    """One entry's row; accuracies are fractions."""

    entry: Entry
    worst: float
    worst_class: int
    worst_count: int
    worst_n: int
    worst_ci: tuple[float, float]  # 95% interval of min_k p_k (Bonferroni-adjusted Wilson, see above)
    tail20: float
    mean: float
    ranks: dict[str, int] = field(default_factory=dict)  # metric key -> rank group (absent when unranked)
    identical_to: str | None = None
    paired: bool = True  # its flags were used (False: resampled from per-class counts)
    tail: float | None = None  # mean robust accuracy of the track's tail classes (a long-tailed track ranking by it)


@dataclass
class Ranking:
    ranked: list[RankedEntry]  # in table order
    identical: list[RankedEntry]  # unranked duplicates
    seed_sd: dict[str, float]  # metric key -> pooled seed standard deviation
    seed_settings: list[str]  # defenses whose seeds gave the spread
    n_boot: int

    def row(self, entry_id: str) -> RankedEntry:
        return next(r for r in self.ranked + self.identical if r.entry.id == entry_id)


def _row(d: EntryData, checkpoint: str, tail_classes: Sequence[int] = ()) -> RankedEntry:
    s = d.entry.evaluation(checkpoint).summary["worst_case"]
    k = int(s["worst_class"])
    n = d.n_per_class[k]
    n_all = np.asarray(d.n_per_class, dtype=np.int64)
    k_all = np.rint(np.nan_to_num(np.asarray(d.per_class, dtype=float)) * n_all).astype(np.int64)
    count = int(k_all[k])
    return RankedEntry(entry=d.entry, worst=float(s["worst"]), worst_class=k, worst_count=count, worst_n=n,
                       worst_ci=worst_class_interval_from_counts(k_all, n_all), tail20=float(s["tail20"]),
                       mean=float(s["mean"]), paired=d.index is not None,
                       tail=float(metric_value(d.per_class, "tail", tail_classes)) if tail_classes else None)


def rank(entries: Sequence[Entry], checkpoint: str, root: Path, *, baselines: Sequence[str] = (),
         n_boot: int = N_BOOT, seed: int = BOOT_SEED,
         loader: Callable[[Entry, str, Path], EntryData] = entry_data,
         order: dict[str, int] | None = None, primary: str = "worst",
         tail_classes: Sequence[int] = ()) -> Ranking:
    """Rank groups of a track's (checked) entries on ``checkpoint`` by the rule in the module docstring.

    ``order``: each entry's position in the repository's history (who was first among identical entries).
    ``primary``: the metric the table sorts by first (``tail`` needs ``tail_classes``).
    """
    metrics = [k for k, _ in METRICS] + ([TAIL_METRIC[0]] if primary == "tail" else [])
    sort_keys = [primary] + [k for k in metrics if k != primary]
    data = [loader(e, checkpoint, root) for e in entries]
    dup = duplicates(data, baselines, order)
    live = [d for d in data if d.id not in dup]
    rows = {d.id: _row(d, checkpoint, tail_classes) for d in data}
    for eid, ref in dup.items():
        rows[eid].identical_to = ref
    seed_sd: dict[str, float] = {}
    setting_of = {d.id: (d.entry.defense.name, repr(sorted((d.entry.defense.args or {}).items()))) for d in live}
    counts: dict[tuple, int] = {}
    for s in setting_of.values():
        counts[s] = counts.get(s, 0) + 1
    if live:
        boot = bootstrap_class_accuracies(live, n_boot=n_boot, seed=seed)
        for key in metrics:
            values = np.array([getattr(rows[d.id], key) for d in live])
            var = pooled_seed_variance({d.id: float(v) for d, v in zip(live, values)}, setting_of)
            seed_sd[key] = math.sqrt(var)
            ranks = rank_groups(significantly_better(values, metric_value(boot, key, tail_classes), var))
            for d, r in zip(live, ranks):
                rows[d.id].ranks[key] = r
    ranked = sorted((rows[d.id] for d in live),
                    key=lambda r: (*(r.ranks[k] for k in sort_keys), *(-getattr(r, k) for k in sort_keys), -r.mean,
                                   r.entry.id))
    identical = sorted((rows[eid] for eid in dup), key=lambda r: r.entry.id)
    multi = sorted({s[0] for s, n in counts.items() if n >= 2})
    return Ranking(ranked=ranked, identical=identical, seed_sd=seed_sd, seed_settings=multi, n_boot=n_boot)
