"""Leaderboard data: tracks (``leaderboards/<track>/track.yaml``) and entries (``leaderboards/<track>/<id>.json``).

A **track** is a run config (:class:`~rfbench.benchmark.runner.config.RunConfig`)
whose ``track:`` section fixes what entries are compared on::

    track:
      id: fashion-mnist-linf
      title: Fashion-MNIST, Linf 0.1, SmallCNN (CPU)
      hardware: cpu                        # cpu | gpu
      protocol: {dataset: fashion-mnist, model: smallcnn, norm: linf, eps: 0.1,
                 attacks: [fgsm, pgd-20, cw-20], n_per_class: 100, test_size: 1000, checkpoint: best}
      fixed_train: [dataset, model, epochs, max_train_samples, eps, ...]   # TrainConfig keys entries must keep

An **entry** (schema ``rfbench.entry/1``) is JSON *data*: it is parsed with
these dataclasses and never executed or imported.  Fields::

    schema, id, track, name, seed, dataset, model, classes,
    threat: {norm, eps},
    defense: {name, args, code (repo-relative path or https URL), paper, fidelity (paper | released)},
    evaluations: {best: {epoch, selected_by, attacks, worst_case_over, n_per_class,
                         per_class: {clean|attack|worst_case: [C fractions]},
                         summary: {name: {mean, worst, worst_class, best, best_class, gap, std, nsd, tail20}},
                         checks, flags_file (repo-relative .npz, required),
                         checkpoint_sha256 (of the evaluated checkpoint file; absent in older entries)},
                   last: {...}},
    cost: {accelerator, device, train_seconds, eval_seconds, gpu_hours (null on CPU),
           cpu_threads ({train: [n], eval: [n]}; CPU only)},
    train_config: {the run's resolved TrainConfig},
    provenance: {code, packages, command, finished_at, run_config}, submitted,
    track_version (the track's ``version`` it was produced under; absent = 1)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfbench.benchmark.runner.config import RunConfig, load_run_config
from rfbench.core.config import choice, from_dict, in_range
from rfbench.core.errors import ConfigError, RfbenchError

ENTRY_SCHEMA = "rfbench.entry/1"
#: the one pattern of entry ids (the file name); matched whole, so a trailing newline is no id
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
ID_RULE = "letters, digits and . _ + - (starting with a letter or digit, at most 100)"


def valid_id(text: object) -> bool:
    """Whether ``text`` is an entry id (:data:`ID_PATTERN`, the whole string)."""
    return isinstance(text, str) and ID_PATTERN.fullmatch(text) is not None
SUMMARY_FIELDS = ("mean", "worst", "worst_class", "best", "best_class", "gap", "std", "nsd", "tail20")


class EntryError(RfbenchError):
    """An entry is malformed or inconsistent; ``problems`` lists every finding."""

    def __init__(self, where: str, problems: list[str]):
        self.where, self.problems = where, list(problems)
        super().__init__(f"{where}: " + "; ".join(self.problems))


@dataclass
class TrackProtocol:
    """What every entry of a track must have been evaluated with."""

    dataset: str
    model: str
    norm: str = field(metadata=choice("linf", "l2"))
    eps: float = field(metadata=in_range(0, None))
    attacks: list[str] = field(default_factory=list)  # attack labels, in run order
    n_per_class: int | None = field(default=None, metadata=in_range(1, None))  # None = the full test set
    test_size: int | None = field(default=None, metadata=in_range(1, None))  # evaluated images in all
    checkpoint: str = "best"  # the ranked checkpoint
    # CPU intra-op threads of a track run (they change the float reduction order; benchmark/train/threads.py)
    threads: int | None = field(default=None, metadata=in_range(1, None))


@dataclass
class TrackInfo:
    id: str
    title: str
    protocol: TrackProtocol
    description: str = ""
    hardware: str = field(default="gpu", metadata=choice("cpu", "gpu"))
    fixed_train: list[str] = field(default_factory=list)
    reference: str = ""  # where published numbers for this setting are (paper and table)
    # the reference among entries with identical predictions is the one of the first baseline (ranking.py)
    baselines: list[str] = field(default_factory=lambda: ["standard", "pgd-at", "trades"])
    # the protocol version: a change of recipe or evaluation bumps it; entries of another version are refused
    version: int = field(default=1, metadata=in_range(1, None))
    # rank only entries with a passing `rfbench leaderboard audit` record (leaderboards/<track>/audits/<id>.json)
    require_audit: bool = False
    # the metric the table sorts by first (ranking.METRICS keys): worst class, worst 20% of classes, or the mean
    # over ``tail_classes`` (a long-tailed track's tail group); ``primary_reason`` says on the page why
    primary_metric: str = field(default="worst", metadata=choice("worst", "tail20", "tail"))
    tail_classes: list[int] = field(default_factory=list)
    primary_reason: str = ""
    # train: entries are defenses trained by the track's recipe; external: models trained elsewhere, evaluated as
    # given (RobustBench's zoo, a local checkpoint; rfbench.benchmark.leaderboard.external)
    kind: str = field(default="train", metadata=choice("train", "external"))


@dataclass
class Track:
    info: TrackInfo
    run: RunConfig
    path: Path

    @property
    def id(self) -> str:
        return self.info.id

    def train_config_for(self, defense: str) -> dict[str, Any]:
        """The track's full training config (every TrainConfig key) when ``defense`` runs, its preset applied.

        ``defense`` is data here (an entry's name): it is never imported, so a plugin's name needs no ``--allow-code``.
        """
        from rfbench.benchmark.runner.config import resolve_run
        from rfbench.core.config import to_dict

        return to_dict(resolve_run(self.run, defense=defense, out="track-run", runs_code=False).train)


def load_track(path: str | Path) -> Track:
    """A track from its ``track.yaml``; the ``track:`` section is required and validated."""
    path = Path(path)
    run = load_run_config(path)
    if not run.track:
        raise ConfigError(f"{path}: not a track (no 'track:' section)")
    info = from_dict(TrackInfo, run.track, where=f"{path} track")
    if info.primary_metric == "tail" and not info.tail_classes:
        raise ConfigError(f"{path}: primary_metric 'tail' needs tail_classes (the class indices of the tail group)")
    if info.id != path.parent.name:
        raise ConfigError(f"{path}: track id '{info.id}' must be the name of its directory '{path.parent.name}'")
    return Track(info=info, run=run, path=path)


def leaderboards_root(root: str | Path | None = None) -> Path:
    """The repository root holding ``leaderboards/``: ``root``, else the cwd when it has one, else this checkout."""
    if root is not None:
        return Path(root)
    cwd = Path.cwd()
    return cwd if (cwd / "leaderboards").is_dir() else Path(__file__).resolve().parents[2]


def writable_root(root: str | Path | None) -> Path:
    """The root that ``submit`` and ``build`` write into: ``root``, else the cwd if it has ``leaderboards/``.

    Never the installed source tree: without ``--root`` and outside a checkout this is an error.
    """
    if root is not None:
        path = Path(root)
        if not (path / "leaderboards").is_dir():
            raise ConfigError(f"--root {path}: no leaderboards/ directory there")
        return path
    if (Path.cwd() / "leaderboards").is_dir():
        return Path.cwd()
    raise ConfigError(f"the current directory {Path.cwd()} has no leaderboards/; run this from your rfbench checkout "
                      "or leaderboard fork, or pass --root DIR")


def list_tracks(root: Path) -> list[Track]:
    return [load_track(p) for p in sorted((root / "leaderboards").glob("*/track.yaml"))]


def find_track(track_id: str, root: Path) -> Track:
    path = root / "leaderboards" / track_id / "track.yaml"
    if not path.is_file():
        valid = ", ".join(t.id for t in list_tracks(root)) or "(none)"
        raise ConfigError(f"unknown track '{track_id}'; valid tracks: {valid}")
    return load_track(path)


# -- entries -------------------------------------------------------------------
@dataclass
class DefenseInfo:
    name: str
    code: str  # repo-relative path of the defense's source, or an https URL
    args: dict[str, Any] = field(default_factory=dict)
    paper: str = ""
    # the run's TrainConfig.fidelity; entries written before the switch existed trained as ``paper``
    fidelity: str = field(default="paper", metadata=choice("paper", "released"))


@dataclass
class Evaluation:
    attacks: list[str]
    worst_case_over: list[str]
    n_per_class: list[int]
    per_class: dict[str, Any]
    summary: dict[str, Any]
    epoch: int | None = None
    selected_by: str = ""
    checks: str = field(default="pass", metadata=choice("pass", "warn", "fail"))
    flags_file: str | None = None
    checkpoint_sha256: str | None = None  # of the evaluated checkpoint file (``rfbench leaderboard audit`` needs it)


@dataclass
class Threat:
    norm: str = field(metadata=choice("linf", "l2"))
    eps: float = field(metadata=in_range(0, None))


@dataclass
class Cost:
    accelerator: str = field(metadata=choice("cpu", "cuda"))
    device: str
    train_seconds: float = field(metadata=in_range(0, None))
    eval_seconds: float = field(metadata=in_range(0, None))
    gpu_hours: float | None = field(default=None, metadata=in_range(0, None))
    # CPU intra-op thread counts per stage, {"train": [n...], "eval": [n...]} (absent in older entries, whose
    # ``device`` text ends "N threads": one count for the whole run, which ``rfbench run`` applies to every stage)
    cpu_threads: dict[str, list[int]] | None = None

    def threads_by_stage(self) -> dict[str, list[int]] | None:
        """The thread counts per stage, from ``cpu_threads`` or else the ``device`` text; None when neither says."""
        if self.cpu_threads is not None:
            return {k: list(v) for k, v in self.cpu_threads.items()}
        m = re.search(r"\b(\d{1,4}) threads\)$", self.device)
        return {"train": [int(m.group(1))], "eval": [int(m.group(1))]} if m else None


@dataclass
class Entry:
    schema: str
    id: str
    track: str
    name: str
    seed: int
    dataset: str
    model: str
    classes: list[str]
    threat: Threat
    defense: DefenseInfo
    evaluations: dict[str, Any]
    cost: Cost
    train_config: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    submitted: str = ""
    track_version: int = field(default=1, metadata=in_range(1, None))  # the track protocol version it was produced under

    def evaluation(self, which: str) -> Evaluation:
        return self.evaluations[which]


def _require(cls: type, data: Any, where: str) -> None:
    """One-line error naming the first required field of ``cls`` missing from ``data``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data:
            raise ConfigError(f"{where}: missing key '{f.name}'")


def parse_entry(data: Any, where: str) -> Entry:
    """Typed :class:`Entry` from JSON data (unknown keys, wrong types and missing fields are errors)."""
    if not isinstance(data, dict):
        raise EntryError(where, [f"expected a JSON object at the top level, got {type(data).__name__}"])
    if data.get("schema") != ENTRY_SCHEMA:
        raise EntryError(where, [f"schema is {data.get('schema')!r}, expected {ENTRY_SCHEMA!r}"])
    try:
        _require(Entry, data, "entry")
        entry = from_dict(Entry, data, where="entry")
        if not isinstance(entry.evaluations, dict) or not entry.evaluations:
            raise ConfigError("entry: 'evaluations' must map checkpoint names to evaluations")
        for k, v in entry.evaluations.items():
            _require(Evaluation, v, f"entry.evaluations.{k}")
        entry.evaluations = {k: from_dict(Evaluation, v, where=f"entry.evaluations.{k}") for k, v in entry.evaluations.items()}
    except ConfigError as exc:
        raise EntryError(where, [f"schema: {exc}"]) from None
    if not valid_id(entry.id):
        raise EntryError(where, [f"id {entry.id[:120]!r} must be {ID_RULE}"])
    return entry
