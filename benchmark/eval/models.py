"""Where an evaluated model comes from: a run directory, a registry name, a user's factory, or RobustBench.

* ``--run DIR [--which best|last]``: :func:`rfbench.benchmark.train.rundir.load_run_model`;
* ``--model NAME --weights W``: a registered architecture with weights loaded safely
  (:func:`rfbench.core.io.load_checkpoint`, ``weights_only``);
* ``--model path/to/file.py:factory [--weights W] --allow-code``: **runs the code in
  that file** to build the model, so it needs the explicit ``--allow-code``;
* ``--model robustbench:<Name>``: a RobustBench zoo model through robustbench's own
  ``load_model`` (imported lazily, with the compatibility step of
  :mod:`rfbench.benchmark.eval.robustbench_compat` for the PyPI release 1.1.1; see
  :data:`ROBUSTBENCH_HINT`).  A checkpoint already in the model directory
  (``DIR/<dataset>/<threat>/<Name>.pt``, RobustBench's layout) loads without the network.

Each loader returns ``(model, source)``; ``source`` describes the model for the
result's provenance (name, checkpoint, which, epoch, how it was selected).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rfbench.core.errors import ConfigError, RfbenchError
from rfbench.core.io.checkpoint import load_checkpoint, load_state_dict_into
from rfbench.core.io.digest import file_sha256
from rfbench.core.plugins import allow_code as _permit_code
from rfbench.core.plugins import import_target
from rfbench.models import create_model
from rfbench.models.base import call_factory

ROBUSTBENCH_HINT = ("install it: pip install 'rfbench[robustbench]' (robustbench 1.1.1 from PyPI), "
                    "or from its repository: pip install git+https://github.com/RobustBench/robustbench.git")
ROBUSTBENCH_DATASETS = {"cifar10": "cifar10", "cifar10-jpeg": "cifar10", "cifar10-lt": "cifar10",
                        "cifar100": "cifar100", "cifar100-lt": "cifar100", "imagenet": "imagenet"}
SELECTION = {"best": "best epoch on the validation split by '{select}' of per-class robust accuracy",
             "last": "last epoch"}


def from_run(run_dir: str | Path, which: str = "best", device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of a run directory, and where it came from (config, checkpoint, epoch, selection rule).

    A directory written by ``rfbench calibrate`` evaluates the calibrated model
    (the source run's checkpoint wrapped in its frozen per-class calibration).
    """
    from rfbench.benchmark.eval.calibrate import is_calibration_dir, load_calibrated_model
    from rfbench.benchmark.train.rundir import CHECKPOINTS, load_run_model

    calibrated = is_calibration_dir(run_dir)
    if calibrated and any((Path(run_dir) / name).exists() for name in CHECKPOINTS.values()):
        raise RfbenchError(f"{run_dir} holds both a training run and a calibration (calibration.pt), so it is unclear "
                           "which to evaluate; move calibration.pt and calibration.json to a directory of their own")
    if calibrated:
        model, info = load_calibrated_model(run_dir, device=device)
        if which not in ("best", info.get("which")):  # "best" is the flag's default: it cannot say more
            raise RfbenchError(f"{run_dir} is a calibration of the run's '{info.get('which')}' checkpoint, so "
                               f"--which {which} does not apply; calibrate that checkpoint with `rfbench calibrate "
                               f"--which {which}` into another directory")
        which = info.get("which", which)
    else:
        model, info = load_run_model(run_dir, which=which, device=device)
    cfg = info.get("config", {})
    kind = "best" if which.endswith("best") else "last"
    source = {
        "kind": "run", "name": f"{Path(run_dir).name}:{which}", "run_dir": str(run_dir), "checkpoint": info.get("checkpoint"),
        "which": which, "epoch": info.get("epoch"), "selected_by": SELECTION[kind].format(select=info.get("select")),
        "defense": info.get("defense"), "architecture": cfg.get("model"), "additional_data": False, "train_config": cfg,
        "train_counts": (info.get("meta") or {}).get("train_counts"),
    }
    if calibrated:
        source["name"] += ":calibrated"
        source["calibration"] = info["calibration"]
    return model, source


def data_args_from_run(source: dict[str, Any]) -> dict[str, Any]:
    """``load_dataset`` keyword arguments that rebuild the run's dataset (its test split is the full test set)."""
    cfg = source.get("train_config", {})
    return {"name": cfg.get("dataset"), "root": cfg.get("data_root"), "download": bool(cfg.get("download", False)),
            "imbalance_ratio": cfg.get("imbalance_ratio"), "val_per_class": cfg.get("val_per_class"), "seed": cfg.get("seed", 0)}


def _load_weights(model: torch.nn.Module, weights: str | None) -> None:
    if weights:
        load_state_dict_into(model, load_checkpoint(weights), source=str(weights))


def from_registry(name: str, weights: str | None, *, num_classes: int, in_channels: int, mean, std,
                  model_args: dict[str, Any] | None = None, layout: str = "auto",
                  normalization: str = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """A registered architecture with ``weights`` (required: an untrained model is no evaluation).

    ``layout`` names the checkpoint's key layout (``auto`` detects it; see
    :mod:`rfbench.models.layouts`), ``normalization`` the input
    normalisation of a checkpoint in a foreign layout (``identity``: the model
    takes unnormalised [0,1] inputs, as TRADES/AutoAttack/RobustBench models do).
    """
    from rfbench.models.layouts import convert_state_dict

    if not weights:
        raise ConfigError(f"--model {name} needs --weights FILE (a checkpoint of that architecture)")
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, model_kwargs=model_args)
    state, info = convert_state_dict(model, name, load_checkpoint(weights), layout=layout, normalization=normalization)
    load_state_dict_into(model, state, source=str(weights))
    return model, {"kind": "registry", "name": name, "architecture": name, "checkpoint": str(weights),
                   "checkpoint_sha256": file_sha256(weights),
                   "which": None, "selected_by": "given by the user", "model_args": model_args or {},
                   "weights_layout": info["layout"], "input_normalization": info["normalization"]}


class _TimmModel(torch.nn.Module):
    """A timm model behind rfbench's input contract: inputs in [0,1], normalised inside by ``normalize``."""

    def __init__(self, net: torch.nn.Module, mean, std):
        super().__init__()
        from rfbench.models.base import Normalize

        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def from_timm(name: str, weights: str | None, *, num_classes: int, in_channels: int, mean, std,
              model_args: dict[str, Any] | None = None, normalization: str = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """``timm:NAME``: a timm architecture (``pip install rfbench[timm]``; imported only here) with local ``weights``.

    Nothing is downloaded (``pretrained=False``); ``weights`` is the model's own
    state_dict.  timm models expect normalised inputs, so the returned module
    takes [0,1] images and normalises them inside: with ``normalization="auto"``
    by the mean/std of the architecture's timm ``pretrained_cfg`` (ImageNet's
    for most), with ``"dataset"`` by the dataset's, with ``"identity"`` not at all.
    """
    try:
        import timm
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RfbenchError(f"--model timm:{name} needs the timm package ({reason}); pip install 'rfbench[timm]'") from None
    if not weights:
        raise ConfigError(f"--model timm:{name} needs --weights FILE (nothing is downloaded)")
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **(model_args or {}))
    except RuntimeError as exc:  # timm's "Unknown model"
        raise ConfigError(f"--model timm:{name}: {str(exc).splitlines()[0]}") from None
    load_state_dict_into(net, load_checkpoint(weights), source=str(weights))
    if normalization == "auto":
        cfg = getattr(net, "pretrained_cfg", None) or {}
        m, s = cfg.get("mean"), cfg.get("std")
        if m is None or len(m) != in_channels:
            m, s, what = (0.0,) * in_channels, (1.0,) * in_channels, "identity (no timm mean/std for this input)"
        else:
            what = f"timm pretrained_cfg mean/std {tuple(m)}/{tuple(s)}"
    elif normalization == "dataset":
        m, s, what = mean, std, "the dataset's mean/std"
    else:
        m, s, what = (0.0,) * in_channels, (1.0,) * in_channels, "identity (unnormalised [0,1] inputs)"
    model = _TimmModel(net, m, s)
    return model, {"kind": "timm", "name": f"timm:{name}", "architecture": f"timm:{name}", "checkpoint": str(weights),
                   "which": None, "selected_by": "given by the user", "model_args": model_args or {},
                   "input_normalization": what}


def from_file(target: str, weights: str | None, *, allow_code: bool, num_classes: int, in_channels: int, mean, std,
              model_args: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``file.py:factory``: runs that file (only with ``allow_code``), calls the factory, loads ``weights`` if given.

    The factory receives those of ``num_classes``, ``in_channels``, ``mean``, ``std`` it
    accepts, plus ``model_args``; it must return a module mapping inputs in [0,1] to logits.
    """
    if not allow_code:
        raise ConfigError(f"--model {target} runs the Python code in that file; pass --allow-code to allow it")
    _permit_code([target])  # the caller allowed this file explicitly
    factory = import_target(target, "model")
    offered = {"num_classes": num_classes, "in_channels": in_channels, "mean": mean, "std": std}
    model = call_factory(factory, target, offered, dict(model_args or {}))
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{target} returned {type(model).__name__}, not a torch.nn.Module")
    _load_weights(model, weights)
    return model, {"kind": "file", "name": target, "architecture": target, "checkpoint": str(weights) if weights else None,
                   "which": None, "selected_by": "given by the user", "model_args": model_args or {}}


def robustbench_dataset(dataset: str) -> str:
    """RobustBench's name of the zoo trained for an rfbench dataset (``cifar10-jpeg`` -> ``cifar10``)."""
    base = ROBUSTBENCH_DATASETS.get(dataset)
    if base is None:
        raise ConfigError(f"RobustBench's zoo has no models for dataset {dataset!r}; it covers "
                          f"{', '.join(sorted(set(ROBUSTBENCH_DATASETS.values())))} ({', '.join(ROBUSTBENCH_DATASETS)} here)")
    return base


def robustbench_checkpoint(name: str, dataset: str, norm: str, model_dir: str | Path | None = None) -> Path:
    """Where robustbench keeps (or downloads) a zoo model's weights: ``DIR/<dataset>/<Linf|L2>/<Name>.pt``."""
    from rfbench.core.threat import NORM_NAMES

    return Path(model_dir or "models") / robustbench_dataset(dataset) / NORM_NAMES[norm] / f"{name}.pt"


def from_robustbench(name: str, dataset: str, norm: str, model_dir: str | Path | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A RobustBench zoo model (Croce et al., NeurIPS 2021 Datasets and Benchmarks) from robustbench's ``load_model``.

    The architecture is robustbench's own; it downloads the weights into
    ``model_dir`` (default ``./models``, robustbench's default) unless they are
    already there.  A zoo model takes [0,1] images (normalisation inside).
    """
    from rfbench.benchmark.eval.robustbench_compat import import_robustbench

    try:
        utils = import_robustbench()
    except Exception as exc:  # ImportError, or a broken install failing inside its own imports
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RfbenchError(f"--model robustbench:{name} needs the robustbench package ({reason}); {ROBUSTBENCH_HINT}") from None
    from rfbench.core.threat import NORM_NAMES

    base, threat = robustbench_dataset(dataset), NORM_NAMES[norm]
    path = robustbench_checkpoint(name, dataset, norm, model_dir)
    known = utils.all_models.get(utils.BenchmarkDataset(base), {}).get(utils.ThreatModel(threat), {})
    if name not in known:
        close = sorted(k for k in known if k.lower().startswith(name.lower()[:6]))[:5]
        raise ConfigError(f"RobustBench's zoo ({base}, {threat}) has no model {name!r}"
                          + (f"; close: {', '.join(close)}" if close else ""))
    try:
        model = utils.load_model(model_name=name, dataset=base, threat_model=threat, model_dir=str(model_dir or "models"))
    except (OSError, RuntimeError, ValueError) as exc:
        where = "loading" if path.is_file() else "downloading"
        raise RfbenchError(f"robustbench:{name}: {where} {path} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return model.eval(), {"kind": "robustbench", "name": f"robustbench:{name}", "architecture": name, "which": None,
                          "checkpoint": str(path), "checkpoint_sha256": file_sha256(path) if path.is_file() else None,
                          "selected_by": "RobustBench zoo", "additional_data": None,
                          "robustbench": {"dataset": base, "threat_model": threat}}
