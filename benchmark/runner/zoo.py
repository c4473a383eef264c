"""A per-class view of a model zoo: evaluate a list of external models (no training), rank them by the worst class.

A zoo file (YAML, schema ``rfbench.zoo/1``)::

    dataset: cifar10                 # an rfbench dataset (its protocol threat unless eps/norm are given)
    norm: linf                       # optional; eps: 8/255 optional
    attacks: ["autoattack:version=standard"]      # optional; the default
    n_per_class: null                # optional: a stratified subset per class
    batch_size: 256                  # optional
    models:
      - robustbench: Carmon2019Unlabeled          # RobustBench's zoo (robustbench's load_model)
        published_autoattack: 0.5953              # optional: RobustBench's AutoAttack accuracy, a fraction
      - name: my-net                              # or a registered architecture with local weights
        model: smallcnn
        weights: nets/my-net.pt
        model_args: {width: 0.25}

``rfbench zoo FILE --out DIR`` evaluates every model into ``DIR/<name>/`` with the
harness of ``rfbench eval`` (resumable batch by batch, each result with its checks
and attack flags; sharded like ``rfbench eval``: ``--shard K/N``, or a launcher's
``RANK``/``WORLD_SIZE``), then writes ``DIR/zoo.json`` and ``DIR/zoo.md``: the models
ranked by worst-class robust accuracy (then mean), with the mean beside RobustBench's
published AutoAttack number (``published_autoattack``, or ``autoattack_acc`` of
RobustBench's ``model_info/<dataset>/<threat>/<Name>.json`` with ``--model-info DIR``)
as a cross-check.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfbench.core.config import from_dict, in_range, load_yaml
from rfbench.core.errors import ConfigError
from rfbench.core.io import atomic_write_json, atomic_write_text
from rfbench.core.perclass import pct

log = logging.getLogger(__name__)

ZOO_SCHEMA = "rfbench.zoo/1"
DEFAULT_ATTACKS = ["autoattack:version=standard"]


@dataclass
class ZooModel:
    """One model of the zoo: ``robustbench: NAME``, or ``model`` (a registered architecture) with ``weights``."""

    robustbench: str | None = None
    name: str | None = None
    model: str | None = None
    weights: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    published_autoattack: float | None = field(default=None, metadata=in_range(0, 1))  # a fraction

    @property
    def label(self) -> str:
        return self.name or self.robustbench or self.model or "?"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.label)


@dataclass
class Zoo:
    dataset: str
    models: list[ZooModel]
    attacks: list[Any] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    eps: float | None = field(default=None, metadata=in_range(0, None))
    norm: str | None = None
    n_per_class: int | None = field(default=None, metadata=in_range(1, None))
    batch_size: int = field(default=256, metadata=in_range(1, None))
    seed: int = field(default=0, metadata=in_range(0, None))


def load_zoo(path: str | Path) -> Zoo:
    """Read and check a zoo file."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a zoo file is a mapping with 'dataset' and 'models'")
    data = {k: v for k, v in data.items() if k != "schema"}
    models = data.pop("models", None)
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{path}: 'models' must be a non-empty list")
    parsed = []
    for i, m in enumerate(models):
        m = {"robustbench": m} if isinstance(m, str) else m
        zm = from_dict(ZooModel, m, where=f"{path} models[{i}]")
        if bool(zm.robustbench) == bool(zm.model):
            raise ConfigError(f"{path} models[{i}]: give either 'robustbench: NAME' or 'model: ARCH' (with 'weights')")
        parsed.append(zm)
    slugs = [m.slug for m in parsed]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"{path}: model names must differ (give 'name:'); got {slugs}")
    zoo = from_dict(Zoo, {**data, "models": []}, where=str(path))
    zoo.models = parsed
    return zoo


def published_from_model_info(model_info: Path, dataset: str, threat: str, name: str) -> float | None:
    """RobustBench's published AutoAttack accuracy (``autoattack_acc``, percent in the file) as a fraction."""
    path = Path(model_info) / dataset / threat / f"{name}.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("autoattack_acc")
        return None if value in (None, "") else float(value) / 100
    except (OSError, ValueError):
        return None


def zoo_row(m: ZooModel, result: Mapping[str, Any], published: float | None) -> dict[str, Any]:
    """One leaderboard row from a model's ``result.json``."""
    wc, clean = result["summary"]["worst_case"], result["summary"]["clean"]
    flags = {a["label"]: a["flags"] for a in result.get("attacks", []) if a.get("flags")}
    return {"name": m.label, "source": f"robustbench:{m.robustbench}" if m.robustbench else m.model,
            "clean": clean["mean"], "robust_mean": wc["mean"], "worst": wc["worst"],
            "worst_class": result["classes"][wc["worst_class"]], "worst_ci95": wc.get("worst_ci95"),
            "published_autoattack": published,
            "difference": None if published is None else wc["mean"] - published,
            "checks": result["checks"]["overall"], "attack_flags": flags, "n_samples": result["n_samples"],
            "attacks": [a["label"] for a in result.get("attacks", [])]}


def rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Worst class first (higher is better), then the mean; ranks 1.."""
    ranked = sorted(rows, key=lambda r: (-r["worst"], -r["robust_mean"], r["name"]))
    return [{**r, "rank": i + 1} for i, r in enumerate(ranked)]


def zoo_markdown(rows: list[dict[str, Any]], zoo: Zoo) -> str:
    head = ("| rank | model | worst class | worst-class robust % | robust mean % | RobustBench AA % | mean − AA (pts) | "
            "clean % | checks |\n|---:|---|---|---:|---:|---:|---:|---:|---|\n")
    body = "".join(
        f"| {r['rank']} | {r['name']} | {r['worst_class']} | {pct(r['worst'])} | {pct(r['robust_mean'])} | "
        f"{'—' if r['published_autoattack'] is None else pct(r['published_autoattack'])} | "
        f"{'—' if r['difference'] is None else pct(r['difference'])} | {pct(r['clean'])} | {r['checks']}"
        f"{' (attack flags)' if r['attack_flags'] else ''} |\n" for r in rows)
    return (f"# Per-class view of the zoo: {zoo.dataset}\n\nRanked by worst-class robust accuracy (worst case over "
            f"{', '.join(rows[0]['attacks']) if rows else 'the attacks'}); RobustBench's published AutoAttack "
            "accuracy beside rfbench's mean as a cross-check.\n\n" + head + body)


def write_board(out: Path, zoo: Zoo, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ranked = rank_rows(rows)
    atomic_write_json(out / "zoo.json", {"schema": ZOO_SCHEMA, "dataset": zoo.dataset, "models": ranked})
    atomic_write_text(out / "zoo.md", zoo_markdown(ranked, zoo))
    return ranked
