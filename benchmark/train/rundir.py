"""Rebuild a trained model from a run directory, safely, for evaluation or fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfbench.benchmark.train.config import TrainConfig
from rfbench.core.config import from_dict
from rfbench.core.errors import RfbenchError
from rfbench.core.io import load_checkpoint, load_state_dict_into
from rfbench.core.threat import Threat
from rfbench.defenses import TrainContext, build_defense
from rfbench.models import create_model

CHECKPOINTS = {"best": "checkpoint-best.pt", "last": "checkpoint-last.pt"}


def _parse_which(which: str) -> tuple[str, str | None]:
    """``best``/``last`` -> raw weights; ``NAME`` or ``NAME-best`` -> an extra model (e.g. ``fawa``)."""
    if which in CHECKPOINTS:
        return which, None
    if which.endswith("-best"):
        return "best", which[: -len("-best")]
    return "last", which


def _bad(path: Path, what: str) -> RfbenchError:
    return RfbenchError(f"{path} is not a usable rfbench checkpoint: {what}")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_weights(weights: Any, path: Path, where: str) -> None:
    if not isinstance(weights, dict) or not weights:
        raise _bad(path, f"'{where}' must be a non-empty dict of tensors, got {type(weights).__name__}")
    for k, v in weights.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            raise _bad(path, f"'{where}' entry {k!r} is a {type(v).__name__}, not a tensor")


def check_run_state(state: dict[str, Any], path: Path) -> None:
    """The fields :func:`load_run_model` reads from a run checkpoint, checked: one line naming the first bad one."""
    meta, config = state.get("meta"), state.get("config")
    if not isinstance(meta, dict):
        raise _bad(path, f"'meta' is a {type(meta).__name__}, not a dict")
    if not isinstance(config, dict):
        raise _bad(path, f"'config' is a {type(config).__name__}, not a dict")
    n = meta.get("num_classes")
    if not isinstance(n, int) or not _is_count(n) or n < 2:
        raise _bad(path, f"meta num_classes is {n!r}, expected an integer >= 2")
    counts = meta.get("train_counts")
    if not (isinstance(counts, list) and len(counts) == n and all(_is_count(c) for c in counts)):
        raise _bad(path, f"meta train_counts is {str(counts)[:80]}, expected {n} counts")
    if not _is_count(meta.get("in_channels")) or meta["in_channels"] < 1:
        raise _bad(path, f"meta in_channels is {meta.get('in_channels')!r}, expected a positive integer")
    for key in ("mean", "std"):
        v = meta.get(key)
        if not (isinstance(v, (list, tuple)) and len(v) == meta["in_channels"] and all(_is_number(x) for x in v)):
            raise _bad(path, f"meta {key} is {str(v)[:80]}, expected {meta['in_channels']} finite numbers")
    threat = meta.get("threat")
    fields = {"norm", "eps", "steps", "alpha"}
    if not (isinstance(threat, dict) and set(threat) <= fields and isinstance(threat.get("norm"), str)
            and all(_is_number(threat[k]) for k in threat if k != "norm")):
        raise _bad(path, f"meta threat is {str(threat)[:80]}, expected a dict of norm, eps, steps and alpha")
    if "model" not in state:
        raise _bad(path, "it has no 'model' weights")
    _check_weights(state["model"], path, "model")
    extras = state.get("extra_models", {})
    if not isinstance(extras, dict):
        raise _bad(path, f"'extra_models' is a {type(extras).__name__}, not a dict")
    for name, weights in extras.items():
        _check_weights(weights, path, f"extra_models.{name}")
    if "defense_state" in state and not isinstance(state["defense_state"], dict):
        raise _bad(path, f"'defense_state' is a {type(state['defense_state']).__name__}, not a dict")


def load_run_model(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The evaluated model of a run: weights from ``which``, the defense's head and inference wrapper, eval mode.

    ``which`` is ``best`` (selected on validation), ``last``, or the name of an
    extra model the defense keeps (``fawa`` = its last state, ``fawa-best`` =
    its state at the best epoch).  Returns ``(model, info)`` where ``info`` has
    the resolved config, checkpoint path, epoch, selection rule and model meta.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RfbenchError(f"run directory not found: {run_dir}")
    ckpt_kind, extra = _parse_which(which)
    path = run_dir / CHECKPOINTS[ckpt_kind]
    if not path.exists():
        raise RfbenchError(f"{path} not found: has `rfbench train --out {run_dir}` finished at least one epoch?")
    state = load_checkpoint(path, map_location="cpu")
    meta, config = state.get("meta"), state.get("config")
    if meta is None or config is None:
        raise RfbenchError(f"{path} has no model description (meta/config); it was not written by rfbench train")
    check_run_state(state, path)
    cfg = from_dict(TrainConfig, config, where=f"{path} config")
    ctx = TrainContext(num_classes=meta["num_classes"], train_counts=meta["train_counts"],
                       threat=Threat(**meta["threat"]), epochs=cfg.epochs, device=torch.device(device),
                       fidelity=cfg.fidelity)
    defense = build_defense(cfg.defense, cfg.defense_args, ctx)
    model = create_model(cfg.model, num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                         mean=meta["mean"], std=meta["std"], model_kwargs=cfg.model_kwargs)
    model = defense.setup_model(model)
    if "defense_state" in state:
        try:
            defense.load_state_dict(state["defense_state"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise RfbenchError(f"{path}: its defense_state does not fit defense {cfg.defense} "
                               f"({type(exc).__name__}: {exc})") from None
    if extra is None:
        weights = state["model"]
    else:
        extras = state.get("extra_models", {})
        if extra not in extras:
            valid = sorted(CHECKPOINTS) + sorted(extras) + [f"{k}-best" for k in extras]
            raise RfbenchError(f"unknown checkpoint '{which}' for {run_dir}; valid: {', '.join(valid)}")
        weights = extras[extra]
    load_state_dict_into(model, weights, source=str(path))
    model = defense.inference_model(model).to(device).eval()
    info = {"run_dir": str(run_dir), "checkpoint": str(path), "which": which, "epoch": state.get("epoch"),
            "select": cfg.select, "config": config, "meta": meta, "defense": cfg.defense}
    return model, info
