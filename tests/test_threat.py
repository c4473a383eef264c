"""The one threat model type and its resolution rule (rfbench.core.threat)."""

from __future__ import annotations

import dataclasses

import pytest

from rfbench.core.errors import ConfigError
from rfbench.core.threat import Threat, ThreatDefaults, resolve_threat, warmup_eps

FMNIST = ThreatDefaults(norm="linf", eps=0.1, train_steps=10, train_alpha=0.025, eval_steps=20, eval_alpha=0.02)


def test_protocol_values_then_overrides_for_train_and_eval():
    assert resolve_threat(FMNIST, "train") == Threat("linf", eps=0.1, steps=10, alpha=0.025)
    assert resolve_threat(FMNIST, "eval") == Threat("linf", eps=0.1, steps=20, alpha=0.02)
    assert resolve_threat(FMNIST, "train", eps=0.2, alpha=0.01, steps=3) == Threat("linf", eps=0.2, steps=3, alpha=0.01)


def test_one_step_rule_a_changed_eps_keeps_the_protocol_ratio_for_every_purpose():
    # train ratio 0.025/0.1 = 1/4, eval ratio 0.02/0.1 = 1/5; hand-computed
    assert resolve_threat(FMNIST, "train", eps=0.2).alpha == pytest.approx(0.05)
    assert resolve_threat(FMNIST, "eval", eps=0.2).alpha == pytest.approx(0.04)
    # another norm has no protocol step: alpha = eps/4, and it needs an explicit eps
    assert resolve_threat(FMNIST, "eval", norm="l2", eps=1.0).alpha == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="needs --eps"):
        resolve_threat(FMNIST, "train", norm="l2")
    for bad in (0.0, -1.0, 2.0, float("nan")):
        with pytest.raises(ConfigError):
            resolve_threat(FMNIST, "eval", eps=bad)


def test_threat_is_immutable_and_warmup_makes_a_new_one():
    t = resolve_threat(FMNIST, "train")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.eps = 0.05
    ramped = t.with_eps(warmup_eps(t.eps, 0, 4))
    assert ramped.eps == pytest.approx(0.025) and ramped.alpha == t.alpha and t.eps == 0.1
    assert [warmup_eps(0.1, e, 4) for e in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert warmup_eps(0.1, 0, 0) == 0.1


def test_trainer_hands_the_defense_a_new_threat_each_warmup_epoch(tmp_path):
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.benchmark.train.trainer import Trainer

    t = Trainer(TrainConfig(dataset="fashion-mnist", max_train_samples=20, val_per_class=1, epochs=2, steps=1,
                            val_steps=1, batch_size=20, eps_warmup_epochs=2, device="cpu", model_kwargs={"width": 0.25},
                            out=str(tmp_path)), quiet=True)
    base = t.threat
    seen = []
    real = t.defense.on_epoch_start
    t.defense.on_epoch_start = lambda e: (seen.append(t.defense.ctx.threat), real(e))
    t.fit()
    assert [s.eps for s in seen] == pytest.approx([base.eps / 2, base.eps])
    assert t.threat is base and base.eps == pytest.approx(0.1)  # the run's threat is never changed
    assert seen[0] is not seen[1]
