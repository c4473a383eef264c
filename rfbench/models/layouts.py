"""Loading state_dicts saved in other codebases' key layouts into the registered models.

The registered CIFAR models (:mod:`rfbench.models.resnet`,
:mod:`rfbench.models.wideresnet`) compute the same functions as the
architectures most robust checkpoints are published with; only the parameter
names differ.  A *layout* renames a foreign state_dict into rfbench's names:

=============== ================================ ==========================================================
layout           architectures                    key layout
=============== ================================ ==========================================================
``rfbench``      all                              ``normalize.*``, ``body.*``, ``head.*`` (our own checkpoints)
``kuangliu``     ``resnet18``                     kuangliu/pytorch-cifar ``models/resnet.py``: ``conv1``, ``bn1``,
                                                  ``layer1..4.<j>.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}``,
                                                  ``linear``; also RobustBench's and AutoAttack's ResNet-18
``robustbench``  ``resnet18``, ``preact_resnet18``, the ResNet-18 above; PreAct-ResNet-18 of Rice et al. 2020 /
                 ``wrn34_10``, ``wrn28_10``       RobustBench (``conv1``, ``layer*.<j>.{bn1,conv1,bn2,conv2,shortcut.0}``,
                                                  final ``bn``, ``linear``); the WideResNet below
``trades``       ``wrn34_10``, ``wrn28_10``       yaodongyu/TRADES ``models/wideresnet.py`` (also RobustBench's and
                                                  AutoAttack's WideResNet): ``conv1``,
                                                  ``block1..3.layer.<j>.{bn1,conv1,bn2,conv2,convShortcut}``,
                                                  final ``bn1``, ``fc``; the unused ``sub_block1.*`` is dropped
=============== ================================ ==========================================================

``auto`` (the default) picks the layout from the keys.  A ``module.`` prefix
(DataParallel) is removed first.  kuangliu's *PreAct*-ResNet-18 has no final
BatchNorm and ReLU, so it is a different function and is refused.

**Normalisation.** rfbench models take inputs in [0,1] and normalise inside
(``normalize.mean/std``).  Checkpoints in a foreign layout carry no such
buffers: TRADES, AutoAttack and RobustBench models take unnormalised [0,1]
inputs, so by default (``normalization="auto"`` or ``"identity"``) the loaded model uses
mean 0, std 1.  kuangliu's own training script normalises *outside* the model
with the CIFAR-10 statistics; for such a checkpoint pass
``normalization="dataset"`` (``--weights-normalization dataset``) to use the
dataset's mean and std instead.  A state_dict that holds its own
``mu``/``sigma`` (or ``mean``/``std``) buffers of shape ``(1, C, 1, 1)`` uses
those.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

from rfbench.core.errors import CheckpointError, ConfigError

LAYOUTS = ("auto", "rfbench", "kuangliu", "robustbench", "trades")
NORMALIZATIONS = ("auto", "identity", "dataset")  # auto: identity for a foreign layout
_RESNETS = ("resnet18",)
_PREACT = ("preact_resnet18",)
_WRNS = ("wrn34_10", "wrn28_10")
_NORM_KEYS = (("mu", "sigma"), ("mean", "std"))

State = dict[str, torch.Tensor]


def _strip_module(state: Mapping[str, torch.Tensor]) -> State:
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _resnet_block_index(layer: int, j: int) -> int:
    return 2 * (layer - 1) + j  # two blocks per stage


def _from_kuangliu_resnet(state: State) -> State:
    """kuangliu ResNet-18 -> ``body.0`` stem conv, ``body.1`` stem BN, ``body.3.<k>`` blocks, ``head``."""
    out: State = {}
    for k, v in state.items():
        if k.startswith("conv1."):
            out["body.0." + k[6:]] = v
        elif k.startswith("bn1."):
            out["body.1." + k[4:]] = v
        elif m := re.match(r"layer(\d)\.(\d+)\.(.*)", k):
            out[f"body.3.{_resnet_block_index(int(m[1]), int(m[2]))}.{m[3]}"] = v
        elif k.startswith("linear."):
            out["head." + k[7:]] = v
        else:
            out[k] = v  # left for the strict check to report
    return out


def _from_robustbench_preact(state: State) -> State:
    """Rice et al. / RobustBench PreAct-ResNet-18 -> ``body.0`` stem, ``body.1.<k>`` blocks, ``body.2`` final BN."""
    out: State = {}
    for k, v in state.items():
        if k.startswith("conv1."):
            out["body.0." + k[6:]] = v
        elif m := re.match(r"layer(\d)\.(\d+)\.(.*)", k):
            rest = m[3].replace("shortcut.0.", "shortcut.")
            out[f"body.1.{_resnet_block_index(int(m[1]), int(m[2]))}.{rest}"] = v
        elif k.startswith("bn."):
            out["body.2." + k[3:]] = v
        elif k.startswith("linear."):
            out["head." + k[7:]] = v
        else:
            out[k] = v
    return out


def _from_trades_wrn(state: State, depth: int) -> State:
    """TRADES / RobustBench WideResNet -> ``body.0`` stem, ``body.<1+k>`` blocks, ``body.<3n+1>`` final BN, ``head``."""
    n = (depth - 4) // 6
    out: State = {}
    for k, v in state.items():
        if k.startswith("sub_block1."):
            continue  # built but never used in TRADES' forward pass
        if k.startswith("conv1."):
            out["body.0." + k[6:]] = v
        elif m := re.match(r"block(\d)\.layer\.(\d+)\.(.*)", k):
            rest = m[3].replace("convShortcut.", "shortcut.")
            out[f"body.{1 + (int(m[1]) - 1) * n + int(m[2])}.{rest}"] = v
        elif k.startswith("bn1."):
            out[f"body.{3 * n + 1}." + k[4:]] = v
        elif k.startswith("fc."):
            out["head." + k[3:]] = v
        else:
            out[k] = v
    return out


def _converter(model_name: str, layout: str) -> Callable[[State], State] | None:
    if layout in ("kuangliu", "robustbench") and model_name in _RESNETS:
        return _from_kuangliu_resnet
    if layout == "robustbench" and model_name in _PREACT:
        return _from_robustbench_preact
    if layout in ("trades", "robustbench") and model_name in _WRNS:
        depth = int(model_name[3:5])
        return lambda s: _from_trades_wrn(s, depth)
    return None


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """The layout of a (``module.``-stripped) state_dict, from its keys."""
    keys = set(state)
    if any(k.startswith(("body.", "head.")) for k in keys):
        return "rfbench"
    if any(k.startswith("block1.layer.") for k in keys) and any(k.startswith("fc.") for k in keys):
        return "trades"
    if any(k.startswith("layer1.") for k in keys) and any(k.startswith("linear.") for k in keys):
        return "kuangliu" if "bn1.weight" in keys else "robustbench"
    return "rfbench"  # unknown: the strict load reports the mismatch


def _foreign_normalization(state: State, own: Mapping[str, torch.Tensor], normalization: str) -> tuple[State, str]:
    for m_key, s_key in _NORM_KEYS:
        if m_key in state and s_key in state and state[m_key].numel() == own["normalize.mean"].numel():
            m, s = state.pop(m_key), state.pop(s_key)
            state["normalize.mean"] = m.reshape(own["normalize.mean"].shape).float()
            state["normalize.std"] = s.reshape(own["normalize.std"].shape).float()
            return state, f"the checkpoint's own {m_key}/{s_key}"
    if normalization == "dataset":
        state["normalize.mean"], state["normalize.std"] = own["normalize.mean"].clone(), own["normalize.std"].clone()
        return state, "the dataset's mean/std"
    state["normalize.mean"] = torch.zeros_like(own["normalize.mean"])
    state["normalize.std"] = torch.ones_like(own["normalize.std"])
    return state, "identity (unnormalised [0,1] inputs)"


def convert_state_dict(model: torch.nn.Module, model_name: str, state: Mapping[str, torch.Tensor],
                       layout: str = "auto", normalization: str = "auto") -> tuple[State, dict[str, str]]:
    """Rename ``state`` (in ``layout``, or detected with ``auto``) into the keys of the registered ``model_name``.

    Returns ``(state, info)`` with ``info = {"layout": ..., "normalization": ...}``.
    ``model`` supplies the normalisation buffers' shapes (and the dataset's
    values for ``normalization="dataset"``).  An unsupported combination raises
    :class:`rfbench.core.errors.ConfigError`.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown weights layout '{layout}'; choose from {', '.join(LAYOUTS)}")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown weights normalization '{normalization}'; choose from {', '.join(NORMALIZATIONS)}")
    state = _strip_module(state)
    used = detect_layout(state) if layout == "auto" else layout
    if used == "rfbench":
        return state, {"layout": "rfbench", "normalization": "the checkpoint's own normalize buffers"}
    if model_name in _PREACT and used == "kuangliu":
        raise CheckpointError("kuangliu's PreAct-ResNet-18 has no final BatchNorm+ReLU, so it is another function than "
                              "preact_resnet18 (Rice et al. / RobustBench layout); it cannot be loaded")
    if model_name in _PREACT and used == "robustbench" and "bn.weight" not in state:
        raise CheckpointError("this PreAct-ResNet-18 checkpoint has no final BatchNorm ('bn.*'; kuangliu's layout): "
                              "another function than preact_resnet18 (Rice et al. / RobustBench layout)")
    conv = _converter(model_name, used)
    if conv is None:
        raise ConfigError(f"weights layout '{used}' is not defined for model '{model_name}' "
                          f"(layouts: kuangliu/robustbench for resnet18, robustbench for preact_resnet18, "
                          f"trades/robustbench for wrn34_10 and wrn28_10)")
    out = conv(state)
    own = model.state_dict()
    out, norm_info = _foreign_normalization(out, own, normalization)
    return out, {"layout": used, "normalization": norm_info}
