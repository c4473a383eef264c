"""The threat model: one immutable type, resolved by one rule, for training, evaluation and calibration.

A :class:`Threat` is the PGD setting an attack starts from: ``norm``, radius
``eps``, step size ``alpha`` and number of ``steps``.  It is frozen: code that
needs another threat (a per-epoch eps warm-up, a spec with its own eps) makes
a new one with :func:`dataclasses.replace`, never mutates a shared one.

Resolution (:func:`resolve_threat`), the same in ``rfbench train``,
``rfbench eval`` and ``rfbench calibrate``:

1. the dataset's protocol values (:class:`ThreatDefaults`,
   with separate steps and step sizes for training and for evaluation);
2. then the values a track or config file sets;
3. then the command line.

Steps 2 and 3 are merged by the config layer before the threat is resolved
(the command line overrides the file), so :func:`resolve_threat` sees one set
of overrides.

**The step-size rule** (stated here only): an explicit ``alpha`` is used as
given.  Otherwise ``alpha = eps · r``, where ``r`` is the protocol's ratio
``alpha/eps`` for that purpose (training or evaluation) when the norm is the
dataset's, and ``r = 1/4`` for another norm (the protocol has no step for it;
1/4 is the ratio of the common ``eps=8/255, alpha=2/255`` setting).  So a
changed ``eps`` keeps the protocol's ratio; an unchanged ``eps`` gives the
protocol's ``alpha`` exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from rfbench.core.errors import ConfigError

NORMS = ("linf", "l2")  # the one list of norms (the PGD core, the attacks and the threat use it)
NORM_NAMES = {"linf": "Linf", "l2": "L2"}  # the spelling of AutoAttack and RobustBench
PURPOSES = ("train", "eval")
OTHER_NORM_RATIO = 0.25  # alpha/eps when the norm is not the dataset's (see the module docstring)


def format_eps(eps: float) -> str:
    """``8/255`` for multiples of 1/255 (RobustBench's convention), else the plain number."""
    k = eps * 255
    if 0 < eps < 1 and abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class Threat:
    """An attack's threat model: ``norm``, radius ``eps``, number of ``steps`` and step ``alpha`` (immutable)."""

    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 10
    alpha: float = 2 / 255

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")

    def with_eps(self, eps: float) -> "Threat":
        """The same threat at radius ``eps`` (alpha unchanged): what an eps warm-up uses for one epoch."""
        return dataclasses.replace(self, eps=float(eps))

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "eps": self.eps, "eps_str": format_eps(self.eps), "steps": self.steps,
                "alpha": self.alpha}


@dataclass(frozen=True)
class ThreatDefaults:
    """The protocol's per-dataset threat values (``docs/protocol.md``, "Threat defaults per dataset"): the first layer of resolution.

    Not a threat model itself: :func:`resolve_threat`
    turns these values, a config's and the command line's into the one
    :class:`Threat` for training (``train_*``) or
    evaluation (``eval_*``).

    ``eps_warmup_epochs`` > 0 asks the trainer to ramp the training eps
    linearly from 0 over that many epochs (the protocol's SVHN note: without
    it, SVHN adversarial training diverges).
    """

    norm: str = "linf"
    eps: float = 8 / 255
    train_steps: int = 10
    train_alpha: float = 2 / 255
    eval_steps: int = 20
    eval_alpha: float = 2 / 255
    eps_warmup_epochs: int = 0


def resolve_threat(defaults: Any, purpose: str, *, norm: str | None = None, eps: float | None = None,
                   alpha: float | None = None, steps: int | None = None) -> Threat:
    """The threat for ``purpose`` (``train`` or ``eval``): the dataset's ``defaults`` with the overrides applied.

    ``defaults`` has ``norm``, ``eps`` and ``{purpose}_steps``/``{purpose}_alpha``
    (a :class:`ThreatDefaults`).  ``None``
    overrides keep the protocol value; ``alpha`` follows the step-size rule of
    this module.  A norm other than the dataset's needs an explicit ``eps``.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    norm = (norm or defaults.norm).lower()
    if norm not in NORMS:
        raise ConfigError(f"--norm must be linf or l2, got {norm!r}")
    if norm != defaults.norm and eps is None:
        raise ConfigError(f"--norm {norm} needs --eps (the dataset's protocol threat is {defaults.norm} "
                          f"eps={format_eps(defaults.eps)})")
    eps = float(defaults.eps if eps is None else eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise ConfigError(f"--eps must be a positive number, got {eps}")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"--eps must be in (0, 1] for the linf norm (images are in [0,1]), got {eps:g}")
    if alpha is None:
        ratio = getattr(defaults, f"{purpose}_alpha") / defaults.eps if norm == defaults.norm else OTHER_NORM_RATIO
        alpha = eps * ratio
    steps = int(getattr(defaults, f"{purpose}_steps") if steps is None else steps)
    return Threat(norm=norm, eps=eps, alpha=float(alpha), steps=steps)


def warmup_eps(base_eps: float, epoch: int, warmup_epochs: int) -> float:
    """The training radius of ``epoch`` (0-based) under a linear warm-up over ``warmup_epochs`` (0 = none).

    ``eps_e = base_eps · min(1, (e+1)/warmup_epochs)``: epoch 0 already trains at
    ``base_eps/warmup_epochs``.  The step size is not ramped.
    """
    if not warmup_epochs:
        return base_eps
    return base_eps * min(1.0, (epoch + 1) / warmup_epochs)
