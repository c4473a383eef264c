"""Named attacks with a torchattacks-like API, all built on the one PGD core.

Example::

    from rfbench.attacks.named import PGD, TemperaturePGD
    atk = PGD(model, eps=8/255, alpha=2/255, steps=20)
    x_adv = atk(x, y)                 # global RNG, like torchattacks
    x_adv = atk(x, y, seed=3)         # its own seeded generator (reproducible, resumable)
    atk.label                         # 'pgd-20'
    TemperaturePGD(model, eps=8/255, steps=20, T=0.5).label   # 'temperature-pgd-20-T0.5'

Every attack has a typed ``Config`` dataclass (validated by
:func:`rfbench.core.config.from_dict`, so a bad key or value is a one-line
error), a stable ``label`` derived from its settings, and ``settings()`` for
the result file.  Attacks put the model in eval mode for their duration and
never compute parameter gradients (the core freezes them).

Registered names: ``fgsm``, ``pgd``, ``cw``, ``temperature-pgd``, ``lsa`` (and
``autoattack`` in :mod:`rfbench.attacks.autoattack`).  Temperature-PGD is not
torchattacks' ``TPGD`` (that one is the TRADES KL attack).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
import torch.nn.functional as F

from rfbench.attacks.core import eval_mode, pgd
from rfbench.attacks.registry import register_attack
from rfbench.core.config import choice, from_dict, in_range
from rfbench.core.errors import ConfigError
from rfbench.core.threat import NORMS, format_eps


def format_value(v: Any, key: str = "") -> str:
    """A config value as it appears in a label: eps as ``8/255``, numbers with ``%.4g``, lists joined by ``+``."""
    if key == "eps" and isinstance(v, float):
        return format_eps(v)
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "+".join(format_value(x) for x in v)
    return str(v)


@dataclass
class AttackConfig:
    """Settings every attack has: the radius ``eps`` in the ``norm``, and an optional explicit ``label``."""

    eps: float = field(default=8 / 255, metadata=in_range(0, None))
    norm: str = field(default="linf", metadata=choice(*NORMS))
    label: str | None = None  # explicit label, replacing the derived one

    def __post_init__(self) -> None:
        if self.norm == "linf" and isinstance(self.eps, (int, float)) and self.eps > 1:
            raise ConfigError(f"'eps' must be in [0, 1] for the linf norm (images are in [0,1]), got {self.eps:g}")


C = TypeVar("C", bound=AttackConfig)


class Attack(Generic[C]):
    """Base class: an attack maps ``(x, y)`` to adversarial inputs inside the eps-ball and [0,1].

    Arguments:
        model: maps inputs in [0,1] to logits.
        reference: the values the settings are compared with to build the label
            (the threat-model defaults when built from a spec); a setting that
            differs from its reference adds ``-key=value`` to the label.  Without
            a reference (direct use) the threat settings (eps, norm, alpha, steps
            beyond the base label) are left out of the label.
        **kwargs: fields of the attack's ``Config``.

    Subclasses are generic in their config: ``class PGD(_Iterative[PGDConfig])`` with
    ``Config = PGDConfig``, so a type checker sees ``self.cfg.steps``.  They implement
    :meth:`perturb` (and :meth:`base_label`).
    ``cascade = True`` marks an expensive attack that the harness runs only on
    the points still robust after the cheaper ones.
    """

    name: ClassVar[str] = "attack"
    cascade: ClassVar[bool] = False
    threat_keys: ClassVar[tuple[str, ...]] = ("eps", "norm")  # filled from the threat model by a spec
    label_keys: ClassVar[tuple[str, ...]] = ()  # settings already shown by base_label()
    quiet_keys: ClassVar[tuple[str, ...]] = ("label", "early_stop", "seed")  # never in the label
    Config: ClassVar[type[AttackConfig]] = AttackConfig  # the subclass's config type (its type parameter C)
    cfg: C

    def __init__(self, model: torch.nn.Module, *, reference: dict[str, Any] | None = None, **kwargs: Any):
        self.model = model
        self.cfg = cast(C, from_dict(self.Config, kwargs, where=f"attack '{self.name}'"))
        self.reference = dict(reference) if reference is not None else None
        self.autocast_dtype: torch.dtype | None = None
        self.flags: dict[str, dict[str, Any]] = {}  # warnings raised while attacking: id -> {message, count}

    # -- API -------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """Adversarial versions of ``x`` (labels ``y``); ``seed`` None uses the global RNG.

        Input gradients are enabled even when the caller is inside ``torch.no_grad()``.
        """
        with eval_mode(self.model), torch.enable_grad():
            return self.perturb(x.detach(), y.detach(), seed=seed)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, *, seed: int | None) -> torch.Tensor:
        raise NotImplementedError

    # -- description -----------------------------------------------------------
    def base_label(self) -> str:
        return self.name

    def hidden_keys(self) -> set[str]:
        """Settings never added to the label (shown by ``base_label`` already, or not changing the answer)."""
        hidden = set(self.label_keys) | set(self.quiet_keys)
        return hidden | set(self.threat_keys) if self.reference is None else hidden

    @property
    def label(self) -> str:
        """Stable label: ``base_label()`` plus ``-key=value`` for every setting off its reference."""
        if self.cfg.label:
            return self.cfg.label
        defaults = dataclasses.asdict(self.Config())
        parts = [self.base_label()]
        hidden = self.hidden_keys()
        for key, value in sorted(dataclasses.asdict(self.cfg).items()):
            if key in hidden:
                continue
            ref = (self.reference or {}).get(key, defaults.get(key))
            if value != ref:
                parts.append(f"{key}={format_value(value, key)}")
        return "-".join(parts)

    def settings(self) -> dict[str, Any]:
        """Every setting, for the result file."""
        out = {**dataclasses.asdict(self.cfg), "name": self.name, "label": self.label}
        if self.autocast_dtype is not None:
            out["autocast"] = str(self.autocast_dtype).replace("torch.", "")
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.cfg).items() if k != "label")
        return f"{type(self).__name__}(label={self.label!r}, {fields})"


def _generator(x: torch.Tensor, seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=x.device).manual_seed(int(seed))


@dataclass
class IterativeConfig(AttackConfig):
    """Settings of the attacks that run the PGD core for ``steps`` steps."""

    alpha: float = field(default=2 / 255, metadata=in_range(0, None))
    steps: int = field(default=10, metadata=in_range(1, None))
    restarts: int = field(default=1, metadata=in_range(1, None))
    start: str = field(default="uniform", metadata=choice("uniform", "normal", "none"))
    early_stop: bool = True  # freeze a sample at its first fooling iterate (same robust/not answer)


IC = TypeVar("IC", bound=IterativeConfig)


class _Iterative(Attack[IC]):
    """Shared parts of the attacks that run the PGD core for ``steps`` steps."""

    threat_keys = ("eps", "norm", "alpha", "steps")
    label_keys = ("steps",)
    Config = IterativeConfig

    def loss_name(self) -> str:
        return "ce"

    def loss_kwargs(self) -> dict[str, Any]:
        return {}

    def aux(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def base_label(self) -> str:
        return f"{self.name}-{self.cfg.steps}"

    def perturb(self, x, y, *, seed=None):
        c = self.cfg
        return pgd(self.model, x, y, eps=c.eps, alpha=c.alpha, steps=c.steps, norm=c.norm,
                   loss=self.loss_name(), loss_kwargs=self.loss_kwargs(), start=c.start,
                   restarts=c.restarts, early_stop=c.early_stop, aux=self.aux(x, y),
                   generator=_generator(x, seed), autocast_dtype=self.autocast_dtype)


@register_attack("fgsm")
class FGSM(Attack[AttackConfig]):
    """FGSM (Goodfellow et al., ICLR 2015): one step of size eps along sign(∇ CE), no random start.

    Implemented as one PGD-core step with ``alpha = eps`` and no start; with
    ``norm='l2'`` it is the fast gradient method (one normalised step).
    """

    def perturb(self, x, y, *, seed=None):
        c = self.cfg
        return pgd(self.model, x, y, eps=c.eps, alpha=c.eps, steps=1, norm=c.norm, loss="ce", start="none",
                   autocast_dtype=self.autocast_dtype)


@dataclass
class PGDConfig(IterativeConfig):
    loss: str = field(default="ce", metadata=choice("ce", "cw", "dlr", "kl"))
    kappa: float = field(default=50.0, metadata=in_range(0, None))  # clamp of the cw margin


@register_attack("pgd")
class PGD(_Iterative[PGDConfig]):
    """PGD (Madry et al., ICLR 2018): ``steps`` projected steps on a loss (ce, cw, dlr or kl) from a random start.

    Shape: ``x`` ``(B, C, H, W)`` in [0,1], ``y`` ``(B,)``; returns ``x_adv`` of the shape of ``x``.
    """

    Config = PGDConfig

    def loss_name(self) -> str:
        return self.cfg.loss

    def loss_kwargs(self) -> dict[str, Any]:
        return {"kappa": self.cfg.kappa} if self.cfg.loss == "cw" else {}

    def aux(self, x, y):
        if self.cfg.loss != "kl":
            return {}
        with torch.no_grad():
            return {"clean_probs": F.softmax(self.model(x).float(), dim=1)}

    def hidden_keys(self) -> set[str]:  # kappa only matters for the cw loss
        return super().hidden_keys() | ({"kappa"} if self.cfg.loss != "cw" else set())


@dataclass
class CWConfig(IterativeConfig):
    kappa: float = field(default=50.0, metadata=in_range(0, None))


@register_attack("cw")
class CW(_Iterative[CWConfig]):
    """CW-PGD: PGD on the Carlini-Wagner margin max_{j≠y} z_j − z_y clamped at −κ (Carlini & Wagner, S&P 2017, Eq. 6 form)."""

    Config = CWConfig

    def loss_name(self) -> str:
        return "cw"

    def loss_kwargs(self) -> dict[str, Any]:
        return {"kappa": self.cfg.kappa}


@dataclass
class TemperaturePGDConfig(IterativeConfig):
    T: float = field(default=1.0, metadata=in_range(1e-6, None))
    tmode: str = field(default="scalar", metadata=choice("scalar", "confidence"))


@register_attack("temperature-pgd")
class TemperaturePGD(_Iterative[TemperaturePGDConfig]):
    """Temperature-PGD (Tian, Kuang, Jiang, Wu, Wang, KDD 2021, arXiv 2105.14240): PGD on CE(softmax(z/T), y).

    With sign steps, T changes the step's direction only: T < 1 focuses the
    gradient on the strongest competing class, T > 1 spreads it over all
    classes, and T = 1 is exactly PGD.

    ``tmode='confidence'`` uses a per-sample temperature ``T_i = T ** p_y(x_i)``
    (``p_y`` the clean softmax probability of the true class): the full T on
    confidently classified samples, fading to plain CE (T_i = 1) on uncertain
    ones.  This per-sample rule is rfbench's own invention (labelled so in
    ``rfbench list`` and in result files); the paper uses one scalar T.
    """

    label_keys = ("steps", "T", "tmode")
    inventions = {"tmode=confidence": "the per-sample confidence temperature T_i = T ** p_y(x_i); "
                                      "the paper uses one scalar T"}

    Config = TemperaturePGDConfig

    def loss_name(self) -> str:
        return "tce"

    def loss_kwargs(self) -> dict[str, Any]:
        return {"T": self.cfg.T}

    def aux(self, x, y):
        if self.cfg.tmode == "scalar":
            return {}
        with torch.no_grad():
            p_y = F.softmax(self.model(x).float(), dim=1).gather(1, y[:, None]).squeeze(1)
        return {"T": torch.pow(torch.full_like(p_y, self.cfg.T), p_y)}

    def base_label(self) -> str:
        mode = "-conf" if self.cfg.tmode == "confidence" else ""
        return f"{self.name}-{self.cfg.steps}-T{format_value(self.cfg.T)}{mode}"


@dataclass
class LSAConfig(IterativeConfig):
    steps: int = field(default=20, metadata=in_range(1, None))
    scale: float = field(default=10.0, metadata=in_range(1e-6, None))  # α: the logits' multiplier


@register_attack("lsa")
class LSA(_Iterative[LSAConfig]):
    """Logit-scaling attack (LSA): PGD on CE(α·z, y), as run by AT-BSL's released evaluation (Yue et al., CVPR 2024).

    The attack goes back to Carlini & Wagner's attack on defensive distillation
    (S&P 2017): scaling the logits by α > 1 undoes a softmax saturated by large
    logits.  CE(α·z, y) is CE(softmax(z/T), y) at T = 1/α, so LSA *is*
    Temperature-PGD at T = 1/α: it runs the same core with the ``tce`` loss and
    ``T = 1/scale`` (bit-identical to ``temperature-pgd:T=0.1`` at the default
    α = 10).  Released defaults (AT-BSL ``eval.py``): α = 10, 20 steps, step
    2/255, uniform start in the eps-ball; the threat model's eps and alpha
    apply as for every attack.  ``early_stop`` (our default) freezes a sample
    at its first fooling iterate and does not change which samples are robust.
    """

    threat_keys = ("eps", "norm", "alpha")  # steps: the released 20, not the protocol's
    label_keys = ("steps", "scale")
    Config = LSAConfig

    def loss_name(self) -> str:
        return "tce"

    def loss_kwargs(self) -> dict[str, Any]:
        return {"T": 1.0 / self.cfg.scale}

    def base_label(self) -> str:
        return f"{self.name}-{self.cfg.steps}-x{format_value(self.cfg.scale)}"
