"""AutoAttack (Croce & Hein, ICML 2020) through ``pyautoattack`` 0.2.0, as an rfbench attack.

Example::

    from rfbench.attacks.autoattack import AutoAttack
    aa = AutoAttack(model, eps=8/255, version="standard")
    x_adv = aa(x, y, seed=0)
    aa.flags          # gradient-masking warnings of pyautoattack's checks, by id
    AutoAttack(model, eps=0.1, version="custom", attacks=["apgd-ce", "apgd-t"], steps=20).label
    # 'autoattack-apgd-ce+apgd-t-steps=20'

What the adapter guarantees:

* ``device``, ``eps``, ``norm`` and ``seed`` are always passed explicitly
  (pyautoattack's defaults are eps 0.3 and a time-based seed);
* the caller's RNG is untouched: pyautoattack reseeds the global RNG, so the
  run happens inside :func:`torch.random.fork_rng`;
* its ``auto-attack`` logger (and anything it prints or ``warnings.warn``\\ s)
  is routed into :data:`log`, never straight to the terminal: its progress and
  setup lines at DEBUG, its check warnings at WARNING (once each); the warnings of its checks (randomised,
  softmax output, dynamic, zero gradients, Square stronger than the gradient
  attacks, too many target classes) become entries of :attr:`Attack.flags`;
* its ``state_path`` resume is never used (it is broken in 0.2.0): the
  harness resumes batch by batch from its own flag file;
* parameter gradients are off during the run.

Versions: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``, and
``custom`` with an ``attacks`` list.  A ``custom`` run without ``restarts``
uses standard AutoAttack's :data:`STANDARD_RESTARTS` (1) for APGD-CE/DLR and
FAB, not pyautoattack's custom-version default of 5 restarts, and records the
value it used in ``effective`` (``restarts_rule``).  ``steps`` (APGD and FAB iterations),
``queries`` (Square), ``restarts`` (APGD-CE/DLR and FAB) and ``targets``
(target classes of APGD-T and FAB-T) override the package's settings; the
effective values are recorded by :meth:`AutoAttack.settings`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from rfbench.attacks.core import frozen_params
from rfbench.attacks.named import Attack, AttackConfig, format_value
from rfbench.attacks.registry import register_attack
from rfbench.core.config import choice, in_range
from rfbench.core.errors import ConfigError
from rfbench.core.threat import NORM_NAMES

log = logging.getLogger(__name__)

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
PACKAGE_LOGGER = "auto-attack"
STANDARD_RESTARTS = 1  # APGD-CE and FAB restarts of the standard version (pyautoattack's _set_version('standard'))

# pyautoattack check messages -> short flag ids (matched on a fragment of the message)
CHECK_FLAGS = (
    ("randomized defense", "randomized"),
    ("probability distribution", "softmax-output"),
    ("dynamic defense", "dynamic"),
    ("zero gradient", "zero-gradients"),
    ("Square Attack has decreased", "square-stronger"),
    ("target classes", "n-classes"),
    ("not possible to use", "n-classes"),
)


def flag_id(message: str) -> str:
    """The short id of a pyautoattack warning (``other`` if it is not one of its checks)."""
    return next((fid for frag, fid in CHECK_FLAGS if frag in message), "other")


class _Route(logging.Handler):
    """Forwards pyautoattack's records to :data:`log` and counts its warnings as flags."""

    def __init__(self, flags: dict[str, dict[str, Any]]):
        super().__init__(logging.DEBUG)
        self.flags = flags

    def note(self, message: str, level: int) -> None:
        if level >= logging.WARNING:
            entry = self.flags.setdefault(flag_id(message), {"message": message, "count": 0})
            entry["count"] += 1
            level = logging.WARNING if entry["count"] == 1 else logging.DEBUG  # say it once, count it always
        else:
            level = logging.DEBUG  # setup and progress lines ("setting parameters...", "clean accuracy: ...")
        log.log(level, "pyautoattack: %s", message)

    def emit(self, record: logging.LogRecord) -> None:
        self.note(record.getMessage(), record.levelno)


@contextlib.contextmanager
def _routed(flags: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Route the ``auto-attack`` logger, ``warnings.warn`` and stdout of pyautoattack into :data:`log`."""
    pkg = logging.getLogger(PACKAGE_LOGGER)
    handler = _Route(flags)
    saved = (pkg.level, pkg.propagate)
    pkg.addHandler(handler)
    pkg.setLevel(logging.DEBUG)
    pkg.propagate = False
    out = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            yield
        for w in caught:
            handler.note(str(w.message), logging.WARNING)
        for line in out.getvalue().splitlines():
            if line.strip():
                log.debug("pyautoattack: %s", line)
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(saved[0])
        pkg.propagate = saved[1]


@dataclass
class AutoAttackConfig(AttackConfig):
    """AutoAttack's settings (see :class:`AutoAttack`)."""

    version: str = field(default="standard", metadata=choice("standard", "plus", "custom"))
    attacks: list[str] = field(default_factory=list)
    steps: int | None = field(default=None, metadata=in_range(1, None))
    queries: int | None = field(default=None, metadata=in_range(1, None))
    restarts: int | None = field(default=None, metadata=in_range(1, None))
    targets: int | None = field(default=None, metadata=in_range(1, None))
    seed: int = 0

    def validate(self) -> None:
        if self.version == "custom" and not self.attacks:
            raise ConfigError(f"attack 'autoattack': version=custom needs attacks=A+B (from {'+'.join(AA_ATTACKS)})")
        if self.version != "custom" and self.attacks:
            raise ConfigError(f"attack 'autoattack': attacks= is only allowed with version=custom, not {self.version}")
        bad = [a for a in self.attacks if a not in AA_ATTACKS]
        if bad:
            raise ConfigError(f"attack 'autoattack': unknown attack(s) {', '.join(bad)}; valid: {', '.join(AA_ATTACKS)}")


@register_attack("autoattack")
class AutoAttack(Attack[AutoAttackConfig]):
    """AutoAttack (Croce & Hein, ICML 2020) via pyautoattack: standard, plus, or a custom attack list.

    Arguments (``Config``): ``eps``, ``norm``, ``version``, ``attacks`` (custom
    only, from apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square), ``steps``,
    ``queries``, ``restarts``, ``targets`` (None keeps the package's value),
    ``seed`` (used when the call gives none).
    """

    cascade = True
    label_keys = ("version", "attacks")

    Config = AutoAttackConfig

    def base_label(self) -> str:
        what = format_value(self.cfg.attacks) if self.cfg.version == "custom" else self.cfg.version
        return f"{self.name}-{what}"

    # -- building the package object --------------------------------------------
    def build(self, device: torch.device | str, seed: int, num_classes: int | None = None):
        """A configured ``pyautoattack.AutoAttack`` (no model call happens here)."""
        from pyautoattack import AutoAttack as PackageAA
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

        c = self.cfg
        with _routed(self.flags if self.flags is not None else {}):
            settings: dict[str, Any] = {"norm": NORM_NAMES[c.norm], "version": c.version,  # validated names
                                        "attacks": list(c.attacks) if c.version == "custom" else None}
            aa = PackageAA(_DefaultLayoutGrad(self.model), eps=float(c.eps), device=device, seed=int(seed), **settings)
        restarts = c.restarts if c.restarts is not None else (STANDARD_RESTARTS if c.version == "custom" else None)
        if c.steps is not None:
            aa.apgd = _apgd_copy(APGDAttack, aa.apgd, c.steps)
            aa.apgd_targeted = _apgd_copy(APGDAttack_targeted, aa.apgd_targeted, c.steps,
                                          n_target_classes=aa.apgd_targeted.n_target_classes)
            aa.fab.n_iter = c.steps
        if c.queries is not None:
            aa.square.n_queries = c.queries
        if restarts is not None:
            aa.apgd.n_restarts = restarts
            aa.fab.n_restarts = restarts
        if c.targets is not None:
            aa.apgd_targeted.n_target_classes = c.targets
            aa.fab.n_target_classes = c.targets
        if num_classes is not None:  # more targets than other classes would wrap around to the true class
            aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, num_classes - 1)
            aa.fab.n_target_classes = min(aa.fab.n_target_classes, num_classes - 1)
        return aa

    def effective(self, num_classes: int | None = None) -> dict[str, Any]:
        """The package settings this config runs with (what the result file records)."""
        aa = self.build("cpu", self.cfg.seed, num_classes)
        return {
            "attacks": list(aa.attacks_to_run),
            "apgd": {"n_iter": aa.apgd.n_iter, "n_restarts": aa.apgd.n_restarts},
            "apgd-t": {"n_iter": aa.apgd_targeted.n_iter, "n_restarts": aa.apgd_targeted.n_restarts,
                       "n_target_classes": aa.apgd_targeted.n_target_classes},
            "fab": {"n_iter": aa.fab.n_iter, "n_restarts": aa.fab.n_restarts, "n_target_classes": aa.fab.n_target_classes},
            "square": {"n_queries": aa.square.n_queries},
            "restarts_rule": ("given (restarts=)" if self.cfg.restarts is not None else
                              f"standard AutoAttack's {STANDARD_RESTARTS} (pyautoattack's custom default of 5 not used)"
                              if self.cfg.version == "custom" else f"pyautoattack's {self.cfg.version} version"),
            "package": "pyautoattack " + _package_version(),
        }

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        out.pop("autocast", None)  # pyautoattack runs in the model's own precision
        out["effective"] = self.effective()
        if self.flags:
            out["flags"] = dict(self.flags)
        return out

    # -- running ------------------------------------------------------------------
    def perturb(self, x, y, *, seed=None):
        if x.shape[0] == 0:
            return x.clone()
        seed = self.cfg.seed if seed is None else seed
        with torch.no_grad():
            num_classes = int(self.model(x[:1]).shape[1])
        aa = self.build(x.device, seed, num_classes)
        cuda = [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), frozen_params(self.model), _routed(self.flags):
            x_adv, _ = aa.run_standard_evaluation(x.contiguous(), y, batch_size=x.shape[0])
        return x_adv.detach()


class _ContiguousGradFn(torch.autograd.Function):
    """Identity whose backward returns the gradient in the default (contiguous) layout."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class _DefaultLayoutGrad(torch.nn.Module):
    """The model as pyautoattack sees it: input gradients in the default layout.

    pyautoattack 0.2.0 flattens gradients with ``.view`` (``checks.check_zero_gradients``), which fails
    on the channels-last gradients a channels-last model (ResNet-18) returns; the model itself keeps
    its layout and speed.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ContiguousGradFn.apply(x))


def _apgd_copy(cls, old, n_iter: int, **extra):
    """The same APGD attack with ``n_iter`` iterations (its step-size schedule derives from n_iter at construction)."""
    return cls(old.model, n_iter=n_iter, norm=old.norm, n_restarts=old.n_restarts, eps=old.eps, seed=old.seed,
               eot_iter=old.eot_iter, rho=old.thr_decr, topk=old.topk, verbose=False, device=old.device,
               use_largereps=old.use_largereps, logger=old.logger, **extra)


def _package_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
