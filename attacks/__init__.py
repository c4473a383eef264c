"""Attacks: one PGD core (:mod:`rfbench.attacks.core`) with pluggable losses, and the named attacks built from it.

Importing this package registers every built-in attack in :data:`ATTACKS`::

    from rfbench import attacks
    attacks.ATTACKS.names()   # ['autoattack', 'cw', 'fgsm', 'lsa', 'pgd', 'temperature-pgd']
    atk = attacks.PGD(model, eps=8/255, alpha=2/255, steps=20)
    x_adv = atk(x, y)

Specs (``pgd:steps=20``) and the threat model live in :mod:`rfbench.attacks.spec`.
"""

from rfbench.attacks.autoattack import AutoAttack
from rfbench.attacks.core import eval_mode, frozen_params, pgd
from rfbench.attacks.losses import LOSSES, make_loss
from rfbench.attacks.named import (
                                   CW,
                                   FGSM,
                                   LSA,
                                   PGD,
                                   Attack,
                                   AttackConfig,
                                   CWConfig,
                                   IterativeConfig,
                                   LSAConfig,
                                   PGDConfig,
                                   TemperaturePGD,
                                   TemperaturePGDConfig,
)
from rfbench.attacks.registry import ATTACKS, list_attacks, register_attack
from rfbench.attacks.spec import DEFAULT_SUITE, AttackSpec, Threat, build_attack, build_attacks, parse_spec

__all__ = [
    "ATTACKS",
    "CW",
    "DEFAULT_SUITE",
    "FGSM",
    "LOSSES",
    "PGD",
    "Attack",
    "AttackConfig",
    "CWConfig",
    "IterativeConfig",
    "LSAConfig",
    "PGDConfig",
    "TemperaturePGDConfig",
    "AttackSpec",
    "AutoAttack",
    "TemperaturePGD",
    "LSA",
    "Threat",
    "build_attack",
    "build_attacks",
    "eval_mode",
    "frozen_params",
    "list_attacks",
    "make_loss",
    "parse_spec",
    "pgd",
    "register_attack",
]
