"""The result of an evaluation: schema ``rfbench.result/2``, held by one frozen, validated type, :class:`EvalResult`.

The harness returns it, ``result.json`` round-trips through it (:meth:`EvalResult.load`,
:meth:`EvalResult.to_dict`), :class:`rfbench.Report` is a view of it and the leaderboard reads
it.  It is assembled in :mod:`~rfbench.benchmark.eval.assemble` and rendered in
:mod:`~rfbench.benchmark.eval.render`.  Keys:

* ``schema``, ``dataset``, ``classes``, ``n_per_class`` (evaluated samples per class), ``threat``;
* ``attacks``: full settings of each attack, in run order, with ``scope``
  (``all``, or ``survivors`` of the attacks listed in ``after``) and any ``flags``;
* ``names``: ``clean``, the attack labels, ``worst_case`` (the keys of the next maps);
* ``per_class``: name -> C accuracies (fractions); ``per_class_ci95``: name -> C [lo, hi];
* ``summary``: name -> ``{mean, worst, worst_class, best, best_class, gap, std, nsd, tail20, worst_ci95}``;
* ``boundary_error`` (clean − worst case, per class), ``confusion`` (name -> C×C counts
  [true, predicted]), ``cfps`` (name -> C), ``weight_norm``, ``groups`` (long-tailed sets),
  ``t_sweep`` (when Temperature-PGD ran at several T), ``checks``, ``provenance``, ``flags_file``;
* ``robustbench``: the RobustBench-style block, kept apart from rfbench's own numbers
  (:func:`~rfbench.benchmark.eval.robustbench_view.robustbench_block`): ``convention``, ``clean_acc``, ``autoattack_acc`` (fractions, like
  every accuracy in the file), ``autoattack_version``, ``autoattack_scope``, ``autoattack_package``,
  ``eps`` ("8/255"), ``threat_model``, ``architecture``, ``additional_data``;
* ``inventions``: rfbench's own methods (not from a paper) that this result used, with their labels.

Definitions (one home: :mod:`rfbench.core.perclass`): robust to an attack
= clean-correct and correct on the adversarial input; the worst case is robust
to every attack of ``worst_case_over`` (the attacks at the evaluation's threat:
eps and norm; attacks at another eps are reported but not part of it); an
empty class is NaN (``null`` in the JSON); ``per_class_ci95`` are Wilson score
intervals, ``worst_ci95`` the Bonferroni-adjusted interval of the worst class.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfbench.core.threat import Threat

SCHEMA = "rfbench.result/2"
REQUIRED_KEYS = ("schema", "classes", "n_per_class", "threat", "attacks", "per_class", "summary", "confusion",
                 "checks", "provenance", "robustbench", "flags_file")
SUMMARY_KEYS = ("mean", "worst", "worst_class", "gap", "std", "tail20")


@dataclass(frozen=True)
class ClassSummary:
    """One name's per-class summary (fractions; class indices into ``classes``); ``worst_ci95`` is the
    Bonferroni-adjusted Wilson interval of the worst class (:mod:`rfbench.core.perclass`)."""

    mean: float | None
    worst: float | None
    worst_class: int | None
    gap: float | None
    std: float | None
    tail20: float | None
    best: float | None = None
    best_class: int | None = None
    nsd: float | None = None
    worst_ci95: tuple[float | None, float | None] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassSummary":
        ci = d.get("worst_ci95")
        return cls(**{k: d.get(k) for k in ("mean", "worst", "worst_class", "gap", "std", "tail20", "best",
                                             "best_class", "nsd")},
                   worst_ci95=tuple(ci) if ci is not None else None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class EvalResult(Mapping[str, Any]):
    """A validated ``rfbench.result/2`` result (frozen).

    The typed fields are what code reads most; every key of the file stays readable as a mapping
    (``result["confusion"]["clean"]``), each read a fresh copy, so nothing can change the result.
    Build one with :meth:`from_dict` (which validates) or :meth:`load`; write it with :meth:`to_dict`.
    """

    classes: tuple[str, ...]
    names: tuple[str, ...]
    n_per_class: tuple[int, ...]
    threat: Threat
    attack_labels: tuple[str, ...]
    worst_case_over: tuple[str, ...]
    per_class: Mapping[str, tuple[float | None, ...]]
    summary: Mapping[str, ClassSummary]
    overall_check: str
    _data: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalResult":
        """Validate ``data`` (``ValueError`` naming the first problem) and freeze a copy of it."""
        if isinstance(data, EvalResult):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"a result must be a JSON object, got {type(data).__name__}")
        _check(data)
        data = copy.deepcopy(dict(data))
        names = tuple(data.get("names") or ["clean", *[a["label"] for a in data["attacks"]], "worst_case"])
        t = data["threat"]
        return cls(
            classes=tuple(data["classes"]), names=names, n_per_class=tuple(int(n) for n in data["n_per_class"]),
            threat=Threat(norm=t["norm"], eps=float(t["eps"]), steps=int(t["steps"]), alpha=float(t["alpha"])),
            attack_labels=tuple(a["label"] for a in data["attacks"]),
            worst_case_over=tuple(data.get("worst_case_over") or ()),
            per_class={k: tuple(v) for k, v in data["per_class"].items()},
            summary={k: ClassSummary.from_dict(v) for k, v in data["summary"].items()},
            overall_check=str((data.get("checks") or {}).get("overall", "")),
            _data=data,
        )

    @classmethod
    def load(cls, path: str | Path) -> "EvalResult":
        """Read and validate a ``result.json``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object (a fresh copy): ``EvalResult.from_dict(r.to_dict()) == r``."""
        return copy.deepcopy(dict(self._data))

    # -- the read-only mapping view of the file --------------------------------------
    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EvalResult):
            return self._data == other._data
        return isinstance(other, Mapping) and self._data == dict(other)

    __hash__ = None  # type: ignore[assignment]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def worst_class_name(self, name: str = "worst_case") -> str | None:
        """The class with the lowest accuracy under ``name`` (the first of a tie), or None."""
        k = self.summary[name].worst_class
        return self.classes[k] if k is not None else None


def as_result(result: Mapping[str, Any]) -> EvalResult:
    """``result`` as a validated :class:`EvalResult` (itself when it already is one)."""
    return EvalResult.from_dict(result)


def validate_result(result: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem if ``result`` does not follow ``rfbench.result/2``."""
    EvalResult.from_dict(result)


def _check(result: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem if ``result`` does not follow ``rfbench.result/2``."""
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"result misses keys: {', '.join(missing)}")
    if result["schema"] != SCHEMA:
        raise ValueError(f"schema is {result['schema']!r}, expected {SCHEMA!r}")
    C = len(result["classes"])
    names = ["clean", *[a["label"] for a in result["attacks"]], "worst_case"]
    listed = result.get("names", names)
    if not isinstance(listed, list):
        raise ValueError("names must be a list")
    absent = [n for n in listed if n not in names]
    if absent:
        raise ValueError(f"names {', '.join(map(repr, absent))} are not clean, an attack's label or worst_case")
    for name in names:
        if not isinstance(result["summary"].get(name), dict):
            raise ValueError(f"summary misses {name!r}")
        pc = result["per_class"].get(name)
        if pc is None or len(pc) != C:
            raise ValueError(f"per_class[{name!r}] must list {C} accuracies")
        if any(v is not None and not (0 <= v <= 1) for v in pc):
            raise ValueError(f"per_class[{name!r}] holds a value outside [0,1]")
        missing = [k for k in SUMMARY_KEYS if k not in result["summary"].get(name, {})]
        if missing:
            raise ValueError(f"summary[{name!r}] misses {', '.join(missing)}")
        conf = result["confusion"].get(name)
        if conf is None or len(conf) != C or any(len(r) != C for r in conf):
            raise ValueError(f"confusion[{name!r}] must be {C}x{C}")
    if len(result["n_per_class"]) != C:
        raise ValueError("n_per_class must list one count per class")
    for key in ("eps", "norm", "steps", "alpha"):
        if key not in result["threat"]:
            raise ValueError(f"threat misses {key!r}")
