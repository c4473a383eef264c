"""Attack specs: ``name[:key=value[,key=value...]]``, resolved against a threat model.

Syntax (one ``--attack`` flag per attack)::

    pgd                                    the dataset's eval PGD (eps, steps, alpha from the threat model)
    pgd:steps=100,restarts=5,loss=dlr
    cw:steps=20,kappa=50
    temperature-pgd:T=0.5                  T-PGD; tmode=confidence for a per-sample T
    fgsm:eps=8/255                         fractions are allowed for numbers
    autoattack:version=standard
    autoattack:version=custom,attacks=apgd-ce+apgd-t,steps=20

* Keys are the fields of the attack's ``Config`` (``rfbench list attacks``,
  and :mod:`rfbench.attacks.named`): ``eps``, ``alpha``, ``steps``, ``restarts``,
  ``loss``, ``T``, ``norm``, ``version``, ``attacks``, ...
* **Lists inside a spec are joined with ``+``** (the comma separates keys):
  ``attacks=apgd-ce+apgd-t``.
* ``eps``, ``norm``, ``alpha`` and ``steps`` default to the threat model
  (:class:`rfbench.core.threat.Threat`, resolved by
  :func:`rfbench.core.threat.resolve_threat` from the dataset's protocol
  values with ``--eps``/``--norm`` applied to every attack); a key in a spec
  overrides it for that attack only.  When a spec changes ``eps`` but not
  ``alpha``, alpha keeps the threat model's ratio alpha/eps (the step-size
  rule of :mod:`rfbench.core.threat`).
* ``label=NAME`` replaces the derived label.

Configs may list specs as strings or as mappings (``{name: pgd, steps: 20}``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import torch
import yaml

import rfbench.attacks.autoattack  # noqa: F401  (registers autoattack)
import rfbench.attacks.named  # noqa: F401  (registers fgsm, pgd, cw, temperature-pgd)
from rfbench.attacks.named import Attack
from rfbench.attacks.registry import ATTACKS
from rfbench.core.config import from_dict
from rfbench.core.errors import ConfigError, UnknownNameError
from rfbench.core.threat import Threat, resolve_threat  # noqa: F401  (the one threat model type)

DEFAULT_SUITE = ("fgsm", "pgd", "cw")


@dataclass(frozen=True)
class AttackSpec:
    """A parsed spec: attack name, raw ``key -> value`` text (or typed values from a config), and the text."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    text: str = ""

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


def parse_spec(text: str) -> AttackSpec:
    """Parse ``name[:key=value[,key=value...]]``; every malformed spec is a one-line :class:`ConfigError`."""
    raw = text.strip()
    name, sep, rest = raw.partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"attack spec '{text}': missing attack name (expected name[:key=value,...])")
    params: dict[str, str] = {}
    if sep and not rest.strip():
        raise ConfigError(f"attack spec '{text}': nothing after ':' (expected key=value,...)")
    for item in rest.split(",") if rest.strip() else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"attack spec '{text}': '{item}' is not key=value (lists use '+', e.g. attacks=apgd-ce+apgd-t)")
        if key in params:
            raise ConfigError(f"attack spec '{text}': key '{key}' given twice")
        params[key] = value.strip()
    return AttackSpec(name, tuple(params.items()), raw)


def as_spec(item: str | dict | AttackSpec) -> AttackSpec:
    """A spec from a string, a config mapping ``{name: ..., key: value}``, or a spec."""
    if isinstance(item, AttackSpec):
        return item
    if isinstance(item, str):
        return parse_spec(item)
    if isinstance(item, dict):
        if not isinstance(item.get("name"), str):
            raise ConfigError(f"attack entry {item!r}: 'name' must be an attack name (a string)")
        params = {k: v for k, v in item.items() if k != "name"}
        text = item["name"] + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
        return AttackSpec(str(item["name"]), tuple(params.items()), text)
    raise ConfigError(f"attack entry {item!r}: expected a spec string or a mapping")


def _field_types(cls: type[Attack]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls.Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls.Config)}


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list or tp is list


def _typed(cls: type[Attack], spec: AttackSpec) -> dict[str, Any]:
    """Spec text values -> Python values: ``+``-lists for list fields, YAML scalars otherwise."""
    types = _field_types(cls)
    out = {}
    for key, value in spec.params:
        if not isinstance(value, str):
            out[key] = value  # already typed (from a config file)
        elif _is_list(types.get(key)):
            out[key] = [v.strip() for v in value.split("+") if v.strip()]
        else:
            try:
                out[key] = yaml.safe_load(value) if value else ""
            except yaml.YAMLError:
                out[key] = value
    return out


def build_attack(spec: str | dict | AttackSpec, model: torch.nn.Module, threat: Threat) -> Attack:
    """Build the attack a spec names, with the threat model's defaults for the keys the spec leaves out."""
    spec = as_spec(spec)
    try:
        cls = ATTACKS.get(spec.name)
        given = _typed(cls, spec)
        if "norm" in given and str(given["norm"]).lower() != threat.norm and "eps" not in given:
            raise ConfigError(f"norm={given['norm']} needs eps= (the threat model's eps is for {threat.norm})")
        reference = {k: getattr(threat, k) for k in cls.threat_keys}
        if "eps" in given and "alpha" in reference and "alpha" not in given:
            reference["alpha"] = threat.alpha * _number(given["eps"]) / threat.eps  # keep alpha/eps
        return cls(model, reference=reference, **{**reference, **given})
    except ConfigError as exc:
        if isinstance(exc, UnknownNameError):
            raise
        raise ConfigError(f"--attack {spec.text}: {exc}") from None


def _number(value: Any) -> float:
    """A number, or a fraction such as ``8/255`` (``benchmark.config.parse_number``)."""
    from rfbench.core.config import parse_number

    try:
        return parse_number(value)
    except ConfigError as exc:
        raise ConfigError(f"eps: {exc}") from None


def check_specs(specs: list[str | dict | AttackSpec]) -> None:
    """Fail fast on unknown attacks, keys, types or ranges, before any model or data is loaded."""
    for item in specs:
        spec = as_spec(item)
        cls = ATTACKS.get(spec.name)
        try:
            from_dict(cls.Config, _typed(cls, spec), where=f"attack '{spec.name}'")
        except ConfigError as exc:
            raise ConfigError(f"--attack {spec.text}: {exc}") from None


def build_attacks(specs: list[str | dict | AttackSpec], model: torch.nn.Module, threat: Threat) -> list[Attack]:
    """Build every spec (the default suite when empty); duplicate labels are an error."""
    built = [build_attack(s, model, threat) for s in (specs or list(DEFAULT_SUITE))]
    seen: dict[str, str] = {}
    for atk, s in zip(built, specs or DEFAULT_SUITE):
        text = as_spec(s).text
        if atk.label in seen:
            raise ConfigError(f"--attack {text} and --attack {seen[atk.label]} are the same attack ('{atk.label}'); "
                              "give one of them label=NAME if you want both")
        seen[atk.label] = text
    return built


def t_sweep_specs(values: list[float], base: dict[str, Any] | None = None) -> list[AttackSpec]:
    """Temperature-PGD specs for a sweep over T (Tian et al., KDD 2021), one per temperature.

    ``base`` holds settings shared by the sweep (e.g. the steps and step size of
    the PGD it is compared with).
    """
    extra = tuple((base or {}).items())
    return [AttackSpec("temperature-pgd", (("T", float(t)),) + extra, f"temperature-pgd:T={t:g}") for t in values]


def sweep_base(suite: list[Attack]) -> dict[str, Any]:
    """The settings of the first CE-PGD in ``suite`` that a T-PGD sweep copies, so the two compare like for like."""
    for a in suite:
        if a.name == "pgd" and a.cfg.loss == "ce":
            return {k: getattr(a.cfg, k) for k in ("eps", "norm", "alpha", "steps", "restarts", "start")}
    return {}
