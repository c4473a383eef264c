"""Post-hoc per-class calibration for the worst class, fitted on the validation split, then frozen.

Tian et al. (KDD 2021) report inference-phase changes that help the most
vulnerable class without giving their form; rfbench offers two general ones,
which are **rfbench's own invention** (:data:`CALIBRATION_NOTE`; labelled so in
``rfbench calibrate --help``, in ``calibration.json`` and in the result of an
evaluation of a calibrated model; ``docs/fairness-defenses.md``).  Both act on the logits z:

* ``bias``: ``z'_k = z_k + b_k`` (a per-class logit bias);
* ``norm``: ``z'_k = s_k·z_k`` (classifier-norm scaling: row k of the linear
  head and its bias scaled by ``s_k > 0``; normalised to geometric mean 1).

**Objective.** Worst-class robust accuracy on the validation split, ties
broken by mean robust accuracy, then mean clean accuracy.  A validation sample
counts as robust when its clean prediction and its prediction at every attack
point are correct.  The attack points of a sample are an untargeted CE-PGD
point and targeted margin-PGD points (maximising ``z_t − z_y``) towards the
``targets`` classes most likely on the clean input (APGD-T style), all against
the *calibrated* model of the current round.

**Search.** Coordinate ascent: for each class in turn, try a grid of values
around its current one (``grid`` points in ±R; R halves after a pass without
improvement; ``passes`` passes) and keep a value only if it strictly improves
the objective on the cached attack points, so the fit never scores below the
identity on them.  For ``bias`` the targeted points are exact: a bias is
constant in x, so ``sup_x' (z'_t − z'_y) = sup_x' (z_t − z_y) + b_t − b_y`` and the
cached margins stay valid for every b.  For ``norm`` they are not, so
``rounds`` rounds alternate re-attacking and refitting.

**Verification.** Every candidate (the identity included) is scored on fresh
attacks against itself (same seed), and the best fresh score wins, so the
returned calibration never has a lower validation objective than the
uncalibrated model under those attacks.  Post-hoc logit changes can mask
gradients: evaluate the calibrated model with AutoAttack too.

**Files.** ``rfbench calibrate --run RUN --method bias --out DIR`` writes
``DIR/calibration.pt`` (tensors, strings and numbers only; loaded with
``weights_only=True``) and ``DIR/calibration.json`` (the fit report), in that
order.  The report is the group's manifest: it is written last and records the
SHA-256 of ``calibration.pt``, and :func:`load_calibration` refuses a state
file whose report is missing or names another digest, so a kill between the
two writes never yields a ``.pt`` and a ``.json`` that disagree.
:func:`load_calibrated_model` rebuilds the run's model with
:func:`rfbench.benchmark.train.rundir.load_run_model` and wraps it in
:class:`CalibratedModel`, which the evaluation harness then treats like any model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from rfbench.attacks.core import eval_mode, pgd
from rfbench.core.config import choice, in_range
from rfbench.core.errors import CheckpointError, RfbenchError
from rfbench.core.io import atomic_write_json, load_checkpoint, save_checkpoint
from rfbench.core.io.digest import file_sha256
from rfbench.core.perclass import nan_mean, nan_min, per_class_accuracy, robust
from rfbench.core.registry import INVENTION_LABEL
from rfbench.core.threat import Threat

log = logging.getLogger(__name__)

CALIBRATION_NOTE = ("post-hoc per-class logit bias / classifier-norm scaling fitted for the worst validation class; "
                    "Tian et al. (KDD 2021) suggest inference-side help for the weakest class without giving a form")

STATE_FILE, REPORT_FILE = "calibration.pt", "calibration.json"
FORMAT = "rfbench-calibration/1"


@dataclass
class CalibrationConfig:
    """How the calibration is fitted (attack of the validation split and search)."""

    method: str = field(default="bias", metadata=choice("bias", "norm"))
    # the attack's threat, resolved by rfbench.core.threat.resolve_threat (no defaults of its own here):
    # `rfbench calibrate` fills it from the dataset's evaluation protocol, the run's training threat and its flags
    eps: float | None = field(default=None, metadata=in_range(0, 1))
    alpha: float | None = field(default=None, metadata=in_range(0, 1))
    steps: int | None = field(default=None, metadata=in_range(1, None))
    norm: str | None = field(default=None, metadata=choice("linf", "l2"))
    targets: int = field(default=9, metadata=in_range(0, None))  # targeted points per sample (most likely other classes)
    rounds: int | None = field(default=None, metadata=in_range(1, None))  # refits; None = 1 (bias) / 3 (norm)
    grid: int = field(default=41, metadata=in_range(3, None))  # candidate values per coordinate
    passes: int = field(default=6, metadata=in_range(1, None))  # coordinate-ascent passes per fit
    log_scale_range: float = field(default=1.0, metadata=in_range(0, None))  # norm: s_k·exp(±range) in the first pass
    batch_size: int = field(default=256, metadata=in_range(1, None))
    seed: int = 0


class CalibratedModel(nn.Module):
    """``model`` with frozen per-class logit scaling and bias: ``z' = s ⊙ z + b``."""

    def __init__(self, model: nn.Module, scale: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.model = model
        self.num_classes = int(scale.numel())
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's penultimate features (unchanged by the calibration)."""
        return self.model.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return z * self.scale.to(z.dtype) + self.bias.to(z.dtype)


# -- attack points -----------------------------------------------------------------
@dataclass
class AttackCache:
    """Logits of every validation sample: clean ``(N,C)`` and at its attack points ``(N,A,C)``."""

    clean: torch.Tensor
    adv: torch.Tensor
    y: torch.Tensor


def _targeted_margin(logits: torch.Tensor, y: torch.Tensor, aux: dict[str, torch.Tensor]) -> torch.Tensor:
    """``z_t − z_y`` for the per-sample target ``aux['target']`` (maximised by a targeted attack)."""
    return logits.gather(1, aux["target"][:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)


def calibration_threat(cfg: CalibrationConfig) -> Threat:
    """The attack threat of ``cfg`` (all four fields must have been resolved; see :class:`CalibrationConfig`)."""
    missing = [k for k in ("norm", "eps", "alpha", "steps") if getattr(cfg, k) is None]
    if missing:
        raise ValueError(f"CalibrationConfig: {', '.join(missing)} not resolved; build them with "
                         "rfbench.core.threat.resolve_threat")
    return Threat(norm=cfg.norm, eps=cfg.eps, steps=cfg.steps, alpha=cfg.alpha)


def attack_points(model: nn.Module, batches: Iterable, cfg: CalibrationConfig, num_classes: int,
                  generator: torch.Generator | None = None) -> AttackCache:
    """Clean logits and logits at the untargeted and targeted attack points of every sample (eval mode)."""
    clean_all, adv_all, y_all = [], [], []
    k = min(cfg.targets, num_classes - 1)
    t = calibration_threat(cfg)
    attack = {"eps": t.eps, "alpha": t.alpha, "steps": t.steps, "norm": t.norm, "generator": generator}
    with eval_mode(model):
        for x, y in batches:
            with torch.no_grad():
                clean = model(x).float()
            points = [pgd(model, x, y, loss="ce", **attack)]
            if k > 0:
                ranked = clean.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
                for r in range(k):
                    points.append(pgd(model, x, y, loss=_targeted_margin, aux={"target": ranked[:, r]}, **attack))
            with torch.no_grad():
                adv = torch.stack([model(p).float() for p in points], dim=1)
            clean_all.append(clean.cpu())
            adv_all.append(adv.cpu())
            y_all.append(y.cpu())
    return AttackCache(torch.cat(clean_all), torch.cat(adv_all), torch.cat(y_all))


# -- objective -----------------------------------------------------------------------
def calibrated_accuracy(cache: AttackCache, scale: torch.Tensor, bias: torch.Tensor, num_classes: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class clean and robust accuracy of the calibrated logits on the cached points, float64 ``(C,)``.

    Robust = clean-correct and correct on every cached attack point; NaN for a class
    without samples (:mod:`rfbench.core.perclass`)."""
    y = cache.y
    clean_ok = (cache.clean * scale + bias).argmax(1) == y
    adv_ok = ((cache.adv * scale + bias).argmax(2) == y[:, None]).all(1)
    return per_class_accuracy(clean_ok, y, num_classes), per_class_accuracy(robust(clean_ok, adv_ok), y, num_classes)


def objective(clean_acc: torch.Tensor, robust_acc: torch.Tensor) -> tuple[float, float, float]:
    """Lexicographic score: (worst-class robust, mean robust, mean clean)."""
    return nan_min(robust_acc), nan_mean(robust_acc), nan_mean(clean_acc)  # classes without samples left out


def _better(a: tuple[float, ...], b: tuple[float, ...], tol: float = 1e-12) -> bool:
    for u, v in zip(a, b):
        if u > v + tol:
            return True
        if u < v - tol:
            return False
    return False


def coordinate_search(cache: AttackCache, method: str, scale: torch.Tensor, bias: torch.Tensor,
                      cfg: CalibrationConfig, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate ascent of :func:`objective` over the per-class bias (or log-scale), from ``(scale, bias)``."""
    scale, bias = scale.clone().float(), bias.clone().float()
    best = objective(*calibrated_accuracy(cache, scale, bias, num_classes))
    if method == "bias":
        top2 = cache.clean.topk(2, dim=1).values
        radius = 2.0 * float((top2[:, 0] - top2[:, 1]).median().clamp(min=1e-3))
    else:
        radius = cfg.log_scale_range
    offsets = torch.linspace(-1.0, 1.0, cfg.grid)
    for _ in range(cfg.passes):
        improved = False
        for k in range(num_classes):
            for d in (offsets * radius).tolist():
                s, b = scale.clone(), bias.clone()
                if method == "bias":
                    b[k] = b[k] + d
                else:
                    s[k] = s[k] * math.exp(d)
                score = objective(*calibrated_accuracy(cache, s, b, num_classes))
                if _better(score, best):
                    best, scale, bias, improved = score, s, b, True
        if not improved:
            radius /= 2.0
    if method == "bias":
        bias = bias - bias.mean()  # a common shift changes no decision
    else:
        scale = scale / scale.log().mean().exp()  # a common factor changes no decision
    return scale, bias


@dataclass
class CalibrationResult:
    """The chosen calibration and the validation numbers of the identity and of the choice (fresh attacks)."""

    method: str
    scale: torch.Tensor
    bias: torch.Tensor
    before: dict[str, list[float]]
    after: dict[str, list[float]]
    rounds: list[dict[str, Any]]


def fit_calibration(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: CalibrationConfig,
                    num_classes: int, device: torch.device | str = "cpu") -> CalibrationResult:
    """Fit a calibration of ``model`` on validation data ``(x, y)`` (float [0,1] images, labels)."""
    device = torch.device(device)

    def batches():
        for i in range(0, len(y), cfg.batch_size):
            yield x[i:i + cfg.batch_size].to(device), y[i:i + cfg.batch_size].to(device)

    def fresh(scale: torch.Tensor, bias: torch.Tensor) -> tuple[AttackCache, torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        wrapped = CalibratedModel(model, scale.to(device), bias.to(device))
        cache = attack_points(wrapped, batches(), cfg, num_classes, gen)
        ident = torch.ones(num_classes), torch.zeros(num_classes)  # the cached logits are already calibrated
        return cache, *calibrated_accuracy(cache, *ident, num_classes)

    def raw_cache(cache: AttackCache, scale: torch.Tensor, bias: torch.Tensor) -> AttackCache:
        """Cached logits back in the uncalibrated model's units (so the search works on raw z)."""
        return AttackCache((cache.clean - bias) / scale, (cache.adv - bias) / scale, cache.y)

    rounds = cfg.rounds if cfg.rounds is not None else (1 if cfg.method == "bias" else 3)
    scale, bias = torch.ones(num_classes), torch.zeros(num_classes)
    history: list[dict[str, Any]] = []
    best: tuple | None = None
    for r in range(rounds + 1):
        cache, clean_acc, robust_acc = fresh(scale, bias)
        score = objective(clean_acc, robust_acc)
        history.append({"round": r, "scale": scale.tolist(), "bias": bias.tolist(), "worst_robust": score[0],
                        "mean_robust": score[1], "mean_clean": score[2]})
        log.info("calibration round %d: val worst-class robust %.4f, mean robust %.4f, mean clean %.4f", r, *score)
        if best is None or _better(score, best[0]):
            best = (score, scale.clone(), bias.clone(), clean_acc, robust_acc)
        if r == 0:
            before = {"clean_acc": clean_acc.tolist(), "robust_acc": robust_acc.tolist()}
        if r < rounds:
            scale, bias = coordinate_search(raw_cache(cache, scale, bias), cfg.method, scale, bias, cfg, num_classes)
    _, scale, bias, clean_acc, robust_acc = best
    return CalibrationResult(cfg.method, scale, bias, before,
                             {"clean_acc": clean_acc.tolist(), "robust_acc": robust_acc.tolist()}, history)


# -- files ---------------------------------------------------------------------------
def save_calibration(out_dir: str | Path, result: CalibrationResult, run_dir: str | Path, which: str,
                     cfg: CalibrationConfig) -> Path:
    """Write ``calibration.pt`` (the frozen parameters) and ``calibration.json`` (the fit report) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = str(Path(run_dir).resolve())
    save_checkpoint(out / STATE_FILE, {"format": FORMAT, "method": result.method, "scale": result.scale.float(),
                                       "bias": result.bias.float(), "run_dir": run, "which": which,
                                       "manifest": REPORT_FILE})
    atomic_write_json(out / REPORT_FILE, {  # the manifest, written last (see the module docstring)
        "format": FORMAT, "state_sha256": file_sha256(out / STATE_FILE), "run_dir": run, "which": which,
        "method": result.method,
        "invention": f"{INVENTION_LABEL}: {CALIBRATION_NOTE}", "scale": result.scale.tolist(), "bias": result.bias.tolist(), "config": vars(cfg).copy(),
        "validation_before": result.before, "validation_after": result.after, "rounds": result.rounds,
    })
    return out


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read and check ``calibration.pt`` (a directory holding it, or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    state = load_checkpoint(path)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rfbench calibration file (format {state.get('format')!r})")
    if "manifest" in state:
        _check_manifest(path)
    scale, bias = state.get("scale"), state.get("bias")
    if not (torch.is_tensor(scale) and torch.is_tensor(bias) and scale.shape == bias.shape and scale.ndim == 1):
        raise CheckpointError(f"{path}: 'scale' and 'bias' must be two tensors of shape (C,)")
    if not (torch.isfinite(scale).all() and torch.isfinite(bias).all() and (scale > 0).all()):
        raise CheckpointError(f"{path}: calibration values must be finite, with positive scales")
    return state


def _check_manifest(state_path: Path) -> None:
    """Refuse a ``calibration.pt`` whose ``calibration.json`` (written last) is missing or records another digest."""
    from rfbench.core.io.atomic import read_json

    report = state_path.parent / REPORT_FILE
    again = f"run `rfbench calibrate ... --out {state_path.parent}` again"
    if not report.exists():
        raise CheckpointError(f"{state_path} has no {REPORT_FILE} beside it: the calibration did not finish; {again}")
    manifest = read_json(report)
    digest = manifest.get("state_sha256") if isinstance(manifest, dict) else None
    if digest != file_sha256(state_path):
        raise CheckpointError(f"{state_path} and {report} come from different calibrations (one was stopped "
                              f"between its two writes, or a file was replaced); {again}")


def is_calibration_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory written by ``rfbench calibrate``."""
    return (Path(path) / STATE_FILE).is_file()


def load_calibrated_model(calib_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The calibrated model of ``calib_dir``: the source run's model (``load_run_model``) wrapped in :class:`CalibratedModel`.

    Returns ``(model, info)`` with the source run's ``info`` plus ``calibration``
    (method, scale, bias, directory).
    """
    from rfbench.benchmark.train.rundir import load_run_model

    state = load_calibration(calib_dir)
    model, info = load_run_model(state["run_dir"], state["which"], device=device)
    c = int(state["scale"].numel())
    if info.get("meta", {}).get("num_classes", c) != c:
        raise RfbenchError(f"{calib_dir}: calibration has {c} classes but the run's model has {info['meta']['num_classes']}")
    wrapped = CalibratedModel(model, state["scale"], state["bias"]).to(device).eval()
    info = dict(info)
    info["calibration"] = {"dir": str(Path(calib_dir).resolve()), "method": state["method"],
                           "scale": state["scale"].tolist(), "bias": state["bias"].tolist()}
    return wrapped, info
