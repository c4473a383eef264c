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
    cfg = from_dict(TrainConfig, config, where=f"{path} config")
    ctx = TrainContext(num_classes=meta["num_classes"], train_counts=meta["train_counts"],
                       threat=Threat(**meta["threat"]), epochs=cfg.epochs, device=torch.device(device),
                       fidelity=cfg.fidelity)
    defense = build_defense(cfg.defense, cfg.defense_args, ctx)
    model = create_model(cfg.model, num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                         mean=meta["mean"], std=meta["std"], model_kwargs=cfg.model_kwargs)
    model = defense.setup_model(model)
    if "defense_state" in state:
        defense.load_state_dict(state["defense_state"])
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
