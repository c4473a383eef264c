"""The attack registry: public attack names -> :class:`rfbench.attacks.named.Attack` subclasses.

An attack registers itself with a class decorator; the decorator also sets the
class's ``name``, which is the first word of its spec (``pgd:steps=20``)::

    from rfbench.attacks.registry import register_attack
    from rfbench.attacks.named import Attack

    @register_attack("my-attack")
    class MyAttack(Attack):
        ...

``import rfbench.attacks`` registers every built-in attack (``fgsm``, ``pgd``, ``cw``,
``temperature-pgd``, ``lsa``, ``autoattack``).
"""

from __future__ import annotations

from typing import Any, Callable

from rfbench.core.registry import Registry

ATTACKS: Registry[Any] = Registry("attack")


def register_attack(name: str) -> Callable[[type], type]:
    """Class decorator: register an attack class under ``name`` (and set ``cls.name``)."""

    def deco(cls: type) -> type:
        cls.name = name
        return ATTACKS.register(name)(cls)

    return deco


def list_attacks(pattern: str = "*") -> list[str]:
    """Registered attack names matching a shell-style ``pattern``."""
    return ATTACKS.names(pattern)
