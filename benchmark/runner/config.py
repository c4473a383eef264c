"""Run configs: one training recipe plus one evaluation suite (a leaderboard track or a paper-table cell).

A run config is a YAML mapping::

    name: fashion-mnist-linf            # names the default output directory runs/<name>/<defense>-s<seed>
    train: {dataset: fashion-mnist, model: smallcnn, defense: pgd-at, epochs: 2, ...}   # TrainConfig keys
    pretrain: null                      # TrainConfig keys over `train` for a pre-training stage (FRL)
    eval: {attacks: [fgsm, "pgd:steps=20", "cw:steps=20"], eps: 0.1, n_per_class: 50}  # EvalConfig keys
    checkpoints: [best, last]           # which checkpoints of the run are evaluated
    defense_presets:                    # merged into train/pretrain when that defense runs
      dafa: {train: {defense_args: {warmup_epochs: 1}}}
    track: {...}                        # leaderboard metadata (tracks only; see benchmark.leaderboard.schema)

Resolution (:func:`resolve_run`), lowest to highest precedence: the file,
``--defense`` (sets ``train.defense``), that defense's ``defense_presets``
entry, ``--seed``, then ``key=value`` overrides with dotted keys
(``train.epochs=1``, ``eval.n_per_class=20``).  ``pretrain`` inherits every
``train`` key it does not set; its best checkpoint becomes ``train.init``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfbench.benchmark.eval.harness import EvalConfig
from rfbench.benchmark.train.config import TrainConfig
from rfbench.core.config import apply_overrides, from_dict, load_yaml, to_dict
from rfbench.core.errors import ConfigError

#: run-level keys a rerun may change without invalidating the finished stages
VOLATILE_KEYS = {("train", "device"), ("eval", "device"), ("eval", "quiet"), ("eval", "plot"), ("out",)}


@dataclass
class RunConfig:
    """The YAML schema of ``rfbench run CONFIG.yaml`` (see the module docstring)."""

    name: str = "run"
    train: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=lambda: ["best", "last"])
    defense_presets: dict[str, Any] = field(default_factory=dict)
    track: dict[str, Any] | None = None
    out: str | None = None

    def validate(self) -> None:
        if not self.checkpoints:
            raise ConfigError("run config: 'checkpoints' must name at least one checkpoint (best, last, ...)")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise ConfigError(f"run config: 'checkpoints' lists a checkpoint twice: {self.checkpoints}")
        for name, preset in self.defense_presets.items():
            if not isinstance(preset, dict) or set(preset) - {"train", "pretrain"}:
                raise ConfigError(f"run config: defense_presets.{name} must be a mapping with 'train' and/or 'pretrain'")


@dataclass
class ResolvedRun:
    """A run config after presets and overrides, with typed, validated stage configs."""

    name: str
    out: Path
    train: TrainConfig
    pretrain: TrainConfig | None
    eval: EvalConfig
    checkpoints: list[str]
    data: dict[str, Any]  # the resolved run config as plain data (written to run.yaml)

    @property
    def defense(self) -> str:
        return self.train.defense

    @property
    def seed(self) -> int:
        return self.train.seed


def deep_merge(base: dict, update: dict | None) -> dict:
    """``base`` updated by ``update``; nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run-config YAML file (a track's ``track.yaml`` is one)."""
    return from_dict(RunConfig, load_yaml(path), where=str(path))


def slug(text: str) -> str:
    """A file-system-safe name: ``examples/my_defense.py:WorstClassAT`` -> ``my_defense-WorstClassAT``."""
    text = text.rsplit("/", 1)[-1].replace(".py:", "-").replace(":", "-")
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "run"


def default_out(name: str, defense: str, seed: int) -> Path:
    return Path("runs") / slug(name) / f"{slug(defense)}-s{seed}"


def resolve_run(
    run: RunConfig,
    *,
    defense: str | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str | None = None,
    quiet: bool = False,
    runs_code: bool = True,
) -> ResolvedRun:
    """Apply ``--defense``, its preset, ``--seed``, ``--device`` and ``key=value`` overrides; validate every stage.

    ``runs_code=False`` resolves a config that will never run (a leaderboard check reading an entry's defense name
    as data): the defense name is then not required to be importable.
    """
    data = to_dict(run)
    if defense:
        data["train"]["defense"] = defense
    chosen = data["train"].get("defense", TrainConfig().defense)
    from rfbench.defenses.registry import check_defense_name

    if runs_code:
        check_defense_name(chosen)  # before any work, and a config or track never names code by itself
    preset = data["defense_presets"].get(chosen) or {}
    data["train"] = deep_merge(data["train"], preset.get("train"))
    if preset.get("pretrain") is not None:
        data["pretrain"] = deep_merge(data.get("pretrain") or {}, preset["pretrain"])
    if seed is not None:
        data["train"]["seed"] = seed
    if device:
        data["train"]["device"] = device
        data["eval"]["device"] = device
    if any(item.split("=", 1)[0].strip() == "train.defense" for item in overrides or []):
        raise ConfigError("set the defense with --defense NAME, not with train.defense= (its preset must apply)")
    data = apply_overrides(data, overrides or [])
    checked = from_dict(RunConfig, data, where="run config")
    base_train = dict(checked.train)
    seed_now = int(base_train.get("seed", TrainConfig().seed))
    out_dir = Path(out) if out else Path(checked.out) if checked.out else default_out(
        checked.name, base_train.get("defense", TrainConfig().defense), seed_now)
    data["out"] = str(out_dir)
    pretrain_cfg = None
    if checked.pretrain is not None:
        if base_train.get("init"):
            raise ConfigError("run config: give either 'pretrain' or 'train.init', not both")
        pre = deep_merge({k: v for k, v in base_train.items() if k not in ("defense_args", "init")}, checked.pretrain)
        pre["out"] = str(out_dir / "pretrain")
        pretrain_cfg = from_dict(TrainConfig, pre, where="run config pretrain")
        base_train["init"] = str(out_dir / "pretrain" / "checkpoint-best.pt")
    base_train["out"] = str(out_dir / "train")
    train_cfg = from_dict(TrainConfig, base_train, where="run config train")
    ev = dict(checked.eval)
    ev.setdefault("device", train_cfg.device)
    ev.setdefault("plot", True)
    ev["quiet"] = quiet or bool(ev.get("quiet", False))
    eval_cfg = from_dict(EvalConfig, ev, where="run config eval")
    return ResolvedRun(name=checked.name, out=out_dir, train=train_cfg, pretrain=pretrain_cfg, eval=eval_cfg,
                       checkpoints=list(checked.checkpoints), data=data)


def fingerprint(data: dict[str, Any]) -> dict[str, Any]:
    """The resolved run config without the keys a rerun may change (compared to refuse a mismatched rerun)."""
    out = copy.deepcopy(data)
    for path in VOLATILE_KEYS:
        node = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def config_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        diff: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            diff += config_differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return diff
    return [] if a == b else [prefix.rstrip(".") or "(root)"]


__all__ = ["RunConfig", "ResolvedRun", "deep_merge", "load_run_config", "resolve_run", "fingerprint",
           "config_differences", "slug", "default_out"]
