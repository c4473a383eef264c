"""The defense plugin interface.

A defense is a training objective plus the state it keeps between epochs.
The trainer (:mod:`rfbench.benchmark.train.trainer`) calls, for every batch::

    out = defense.training_step(model, x, y, pos)      # -> LossOutput
    out.loss.backward(); optimizer.step()
    defense.on_batch_end(y, out.adv_logits)

and after every epoch ``defense.on_epoch_end(stats)`` with the per-class
statistics of :class:`EpochStats`.  Only ``training_step`` (and so ``perturb``
and ``loss``) receives the model the forward runs through, which may be a
``torch.compile`` or DistributedDataParallel wrapper; every other model a
defense sees (``EpochStats.model``, :meth:`Defense.on_train_start`) is the bare
module.  A weight average (an EMA, CFA's FAWA) is requested from the trainer
through ``ctx.averages`` (:mod:`rfbench.models.averaging`), never kept
by the defense.  Override only what your method changes:

* :meth:`Defense.perturb` -- the inner maximisation (default: the PGD core with
  the training threat model and per-sample ``eps``/``alpha`` from
  :meth:`Defense.sample_eps`), run with frozen parameters, BN in eval mode and a
  start clipped to [0,1] unless :meth:`Defense.attack_fidelity` (or
  ``attack_kwargs``, which may return ``bn``, ``start_clip`` and ``start_eps``) says otherwise;
* :meth:`Defense.loss` -- the training loss from model, batch and state;
* :meth:`Defense.on_epoch_end` -- the per-epoch state update;
* :meth:`Defense.on_train_start` -- a measurement of the starting weights;
* :meth:`Defense.setup_model` -- a head change (e.g. a cosine classifier);
* :meth:`Defense.inference_model` -- an inference-time logit adjustment;
* :meth:`Defense.sample_order` / :meth:`Defense.on_batch_end` -- a class sampler;
* :meth:`Defense.state_dict` / :meth:`Defense.load_state_dict` -- resumable state
  (by default every tensor, list, number and dict attribute named in ``state_keys``).

Hyper-parameters are a dataclass (``Config``) with the paper's defaults.

**Fidelity.**  ``ctx.fidelity`` is the run's ``fidelity`` (``paper`` or
``released``, :data:`FIDELITIES`).  Under ``released`` a defense behaves as its
authors' released code does (inner maximisation, BN mode during the attack,
random start and its clipping, schedules, statistics, defaults); under
``paper`` as the paper describes it.  A defense states its release's attack in
the class attribute ``released_attack`` (keyword arguments of the PGD core:
``bn``, ``start_clip``, ``start_eps``), which :meth:`Defense.attack_fidelity`
applies in ``released`` mode; other differences read :attr:`Defense.released`.
``docs/defenses.md`` lists every difference per method.

Minimal example (a complete defense; ``--defense my_file:ClippedAT`` loads it)::

    from dataclasses import dataclass
    import torch.nn.functional as F
    from rfbench.defenses.base import Defense, LossOutput

    class ClippedAT(Defense):
        \"\"\"PGD-AT with the adversarial CE clipped at ``max_loss``.\"\"\"

        @dataclass
        class Config:
            max_loss: float = 5.0

        def loss(self, model, x, y, x_adv):
            logits = model(x_adv)
            ce = F.cross_entropy(logits, y, reduction="none").clamp(max=self.cfg.max_loss)
            return LossOutput(ce.mean(), logits)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from rfbench.attacks.core import bn_mode, pgd
from rfbench.core.threat import Threat
from rfbench.models.averaging import WeightAverages
from rfbench.models.base import unwrap

FIDELITIES = ("paper", "released")
PAPER_ATTACK: dict[str, Any] = {"bn": "eval", "start_clip": True}  # rfbench's attack unless a release differs


@dataclass
class TrainContext:
    """What a defense may know about the run when it is built.

    * ``threat``: the training threat model of the *current* epoch, an immutable
      :class:`~rfbench.core.threat.Threat`.  Under an eps warm-up the trainer
      puts a new one here before each epoch; read ``self.ctx.threat`` when you
      need it rather than keeping a copy.
    * ``generator``: the attack randomness; pass it to ``pgd(generator=...)``
      unchanged (in data-parallel training it is a
      :class:`~rfbench.benchmark.train.distributed.ShardedGenerator`).
    * ``fidelity``: ``paper`` or ``released`` (the run config's ``fidelity``; see the module docstring).
    * ``averages``: the trainer's weight-averaging facility
      (:class:`~rfbench.models.averaging.WeightAverages`); request a
      named average in ``__init__``, update it in ``on_epoch_end`` or
      ``on_batch_end``.  The trainer checkpoints and evaluates it.
    """

    num_classes: int
    train_counts: list[int]
    threat: Threat
    epochs: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    generator: torch.Generator | None = None
    val_loader: Any = None  # callable(batch_size) -> iterator of (x, y, pos) over the validation split
    lr_milestones: list[int] = field(default_factory=list)
    averages: WeightAverages = field(default_factory=WeightAverages)
    fidelity: str = "paper"


@dataclass
class LossOutput:
    """The batch loss, the logits on the adversarial examples (for statistics) and named terms to log."""

    loss: torch.Tensor
    adv_logits: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class AWPSettings:
    """Adversarial weight perturbation a defense asks the trainer for (:mod:`rfbench.defenses.awp`):
    γ, the relative size per layer, and the warm-up as a fraction of the training budget."""

    gamma: float
    warmup: float = 0.0


@dataclass
class EpochStats:
    """Per-class statistics handed to :meth:`Defense.on_epoch_end` (lists indexed by class).

    * ``train_pred_counts[i]``: training adversarial examples *predicted as* class i;
    * ``train_robust_acc[i]``: accuracy on class i's training adversarial examples;
    * ``train_adv_probs[i][j]``: mean softmax probability of class j over class i's
      training adversarial examples (DAFA's p_i(j));
    * ``val_clean_acc`` / ``val_robust_acc``: per-class validation accuracy, clean and
      under the trainer's validation PGD;
    * ``model``: the bare training module (never a ``torch.compile`` or
      DistributedDataParallel wrapper), in the mode the trainer left it; a
      defense that measures it must not change its weights.
    """

    epoch: int
    train_pred_counts: list[int]
    train_robust_acc: list[float]
    train_adv_probs: list[list[float]]
    val_clean_acc: list[float]
    val_robust_acc: list[float]
    model: nn.Module | None = None


@dataclass
class DefenseConfig:
    """A defense without settings (the base of none in particular: any dataclass can be a defense's config)."""


C = TypeVar("C")


class Defense(Generic[C]):
    """Base class: PGD-AT (Madry et al., ICLR 2018) unless a subclass overrides a hook.

    Generic in its config: ``class TRADES(Defense[TRADESConfig])`` with ``Config = TRADESConfig``, so
    a type checker sees ``self.cfg.beta``.  A plugin may keep the older nested form (a ``Config``
    dataclass inside the class); then ``cfg`` is untyped for the checker, and everything else works alike.
    """

    name: ClassVar[str] = "defense"
    Config: ClassVar[type[Any]] = DefenseConfig
    cfg: C

    state_keys: ClassVar[tuple[str, ...]] = ()
    # the release's inner maximisation where it differs from PAPER_ATTACK (pgd keyword arguments)
    released_attack: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: C, ctx: TrainContext):
        self.cfg = cfg
        self.ctx = ctx
        self.epoch = 0

    # -- model ---------------------------------------------------------------
    def setup_model(self, model: nn.Module) -> nn.Module:
        """Change the model before training (e.g. a cosine head).  Default: unchanged."""
        return model

    def inference_model(self, model: nn.Module) -> nn.Module:
        """The model to evaluate (e.g. with a logit adjustment).  Default: ``model`` itself."""
        return model

    @property
    def released(self) -> bool:
        """True when the run reproduces the released code (``fidelity: released``)."""
        return self.ctx.fidelity == "released"

    # -- per batch -------------------------------------------------------------
    def attack_fidelity(self, y: torch.Tensor) -> dict[str, Any]:
        """BN mode and start clipping of the inner maximisation: :data:`PAPER_ATTACK`, updated by
        ``released_attack`` under ``fidelity: released``."""
        return {**PAPER_ATTACK, **(self.released_attack if self.released else {})}

    def sample_eps(self, y: torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Per-sample ``(eps, alpha)`` for the inner maximisation.  Default: the threat model's scalars."""
        return self.ctx.threat.eps, self.ctx.threat.alpha

    def attack_kwargs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Loss and start of the inner maximisation.  Default: CE with a uniform start."""
        return {"loss": "ce", "start": "uniform"}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The inner maximisation: the PGD core with :meth:`attack_fidelity` (BN mode, start clipping), parameters frozen.

        Subclasses that run their own attack should call ``unwrap(model)`` first
        (see :func:`rfbench.models.base.unwrap`), and compute loss-side features
        with ``model(x, return_features=True)``, so data-parallel training works.
        """
        t = self.ctx.threat
        eps, alpha = self.sample_eps(y)
        model = unwrap(model)  # attack the bare module: a DDP wrapper must only see the loss's forward
        fidelity = self.attack_fidelity(y)
        with bn_mode(model, fidelity["bn"]):  # attack_kwargs sees the model in the attack's mode
            kwargs = {**fidelity, **self.attack_kwargs(model, x, y)}
        return pgd(model, x, y, eps=eps, alpha=alpha, steps=t.steps, norm=t.norm,
                   generator=self.ctx.generator, autocast_dtype=self.ctx.autocast_dtype, **kwargs)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> LossOutput:
        """The training loss.  Default: CE on the adversarial examples (PGD-AT)."""
        logits = model(x_adv)
        return LossOutput(nn.functional.cross_entropy(logits, y), logits)

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor | None = None) -> LossOutput:
        """Inner maximisation then loss, with the model in train mode for the loss."""
        x_adv = self.perturb(model, x, y)
        model.train()
        return self.loss(model, x, y, x_adv)

    def on_batch_end(self, y: torch.Tensor, adv_logits: torch.Tensor | None) -> None:
        """Called after each optimiser step.  Default: nothing."""

    def weight_perturbation(self) -> AWPSettings | None:
        """Adversarial weight perturbation the trainer should run around this defense's loss (a training
        hook, :mod:`rfbench.defenses.awp`), or None.  Default: None (a run's ``awp_gamma`` may still ask)."""
        return None

    @classmethod
    def has_own_training_step(cls) -> bool:
        """True when the class overrides :meth:`training_step` (then the trainer cannot split perturb and loss)."""
        return cls.training_step is not Defense.training_step

    # -- per epoch -------------------------------------------------------------
    def sample_order(self, epoch: int, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """The order of training positions for this epoch, or None for a uniform shuffle."""
        return None

    def on_train_start(self, model: nn.Module) -> None:
        """Called once per training session, before its first batch (also after a resume), with the bare module.

        For a measurement of the starting weights (FRL's initial update).  It
        runs outside any training step, so every rank of a data-parallel run
        measures the same thing; keep state so that a resumed run does not
        repeat it.  Default: nothing.
        """

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch.  Default: records the epoch."""
        self.epoch = epoch

    def on_epoch_end(self, stats: EpochStats) -> dict[str, Any]:
        """Update state from per-class statistics; return anything worth logging.  Default: nothing."""
        return {}

    # -- state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Resumable state: the attributes named in ``state_keys`` plus the epoch."""
        out: dict[str, Any] = {"epoch": self.epoch}
        for k in self.state_keys:
            v = getattr(self, k)
            out[k] = v.detach().cpu().clone() if torch.is_tensor(v) else v
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state.get("epoch", 0)
        for k in self.state_keys:
            if k in state:
                cur = getattr(self, k, None)
                v = state[k]
                setattr(self, k, v.to(cur.device) if torch.is_tensor(v) and torch.is_tensor(cur) else v)

    def __repr__(self) -> str:
        cfg: Any = self.cfg  # a dataclass instance (its type is the subclass's parameter)
        params = ", ".join(f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))
        return f"{type(self).__name__}({params})"
