"""Update rules of the robust-fairness defenses against hand-computed values.

FRL (multiplier steps, clamp/rescale, eps-multiplier bounds), CFA (class eps
and β, FAWA accept/reject and averaging), WAT (Hedge weights), DAFA (weights of
a 3×3 probability matrix), CFOL (Exp3 step, sampling distribution, resume),
class-weights, the shared TRADES terms, and the post-hoc calibration on a toy
problem whose answer is known.  Models are tiny linear maps on 2-D inputs, so
every test runs in well under a second.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rfbench.core.errors import CheckpointError, ConfigError
from rfbench.defenses import EpochStats, Threat, TrainContext, build_defense
from rfbench.defenses.cfa import cfa_class_beta, cfa_class_eps, fawa_accepts
from rfbench.defenses.cfol import cfol_distribution, cfol_exp3_update, sample_by_class
from rfbench.defenses.dafa import dafa_weights
from rfbench.defenses.frl import frl_class_weights, frl_eps_multiplier, frl_multiplier_step, frl_violations
from rfbench.defenses.trades_terms import trades_attack_kwargs, trades_terms
from rfbench.defenses.wat import wat_hedge_weights, wat_losses_with_mean

EPS = 8 / 255
ALPHA = 2 / 255


def ctx_for(c: int = 3, val=None, counts=None, steps: int = 2) -> TrainContext:
    return TrainContext(num_classes=c, train_counts=counts or [10] * c,
                        threat=Threat(norm="linf", eps=EPS, alpha=ALPHA, steps=steps), epochs=3,
                        generator=torch.Generator().manual_seed(0), val_loader=val)


def stats(epoch: int, c: int = 3, model=None, train_robust=None, val_robust=None, probs=None) -> EpochStats:
    return EpochStats(epoch=epoch, train_pred_counts=[10] * c,
                      train_robust_acc=train_robust or [0.5] * c,
                      train_adv_probs=probs or [[1.0 / c] * c for _ in range(c)],
                      val_clean_acc=[0.8] * c, val_robust_acc=val_robust or [0.5] * c, model=model)


def linear(c: int = 3, d: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(d, c)


def toy_batch(n: int = 12, c: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, generator=g), torch.arange(n) % c


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol)


# -- TRADES terms ------------------------------------------------------------------------
def test_trades_terms_match_torch_reference():
    clean, adv = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    ce, kl = trades_terms(clean, adv, y)
    assert close(ce, F.cross_entropy(clean, y, reduction="none"))
    ref = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="none").sum(1)
    assert close(kl, ref) and (kl >= 0).all()
    kw = trades_attack_kwargs(linear(4, 2), torch.rand(5, 2))
    assert kw["loss"] == "kl" and kw["start"] == "normal" and kw["start_std"] == 0.001
    assert close(kw["aux"]["clean_probs"].sum(1), torch.ones(5))


# -- FRL ------------------------------------------------------------------------------
def test_frl_violations_by_hand():
    g0, g1 = frl_violations(torch.tensor([0.9, 0.8, 0.6]), torch.tensor([0.5, 0.5, 0.2]), 0.1, 0.1)
    # clean error [0.1, 0.2, 0.4], mean 0.7/3; boundary error [0.4, 0.3, 0.4], mean 1.1/3
    assert close(g0, [0.1 - 0.7 / 3 - 0.1, 0.2 - 0.7 / 3 - 0.1, 0.4 - 0.7 / 3 - 0.1])
    assert close(g1, [0.4 - 1.1 / 3 - 0.1, 0.3 - 1.1 / 3 - 0.1, 0.4 - 1.1 / 3 - 0.1])


def test_frl_multiplier_step_clamps_and_rescales():
    # [0.1, 0, 0.3] + 0.1·[1, -1, 2] = [0.2, -0.1, 0.5] -> clamp [0.2, 0, 0.5] (sum 0.7) -> ×0.5/0.7
    lam = frl_multiplier_step(torch.tensor([0.1, 0.0, 0.3]), torch.tensor([1.0, -1.0, 2.0]), 0.1, 0.5)
    assert close(lam, [0.2 * 0.5 / 0.7, 0.0, 0.5 * 0.5 / 0.7])
    assert abs(float(lam.sum()) - 0.5) < 1e-12
    # under the budget: no rescale
    lam = frl_multiplier_step(torch.zeros(3), torch.tensor([0.5, -0.2, 1.0]), 0.1, 0.5)
    assert close(lam, [0.05, 0.0, 0.1])


def test_frl_class_weights_by_hand():
    w = frl_class_weights(torch.tensor([0.3, 0.0, 0.15], dtype=torch.float64))
    # 1/3 + λ - 0.15
    assert close(w, [1 / 3 + 0.15, 1 / 3 - 0.15, 1 / 3])
    assert abs(float(w.sum()) - 1.0) < 1e-12


def test_frl_eps_multiplier_bounds():
    m = frl_eps_multiplier(torch.tensor([-1.0, 0.0, 0.1, 1.0]))
    assert close(m, [0.98, 1.0, math.exp(0.2), 3.0])


def test_frl_rwrm_update_and_margins():
    d = build_defense("frl-rwrm", {}, ctx_for(3))
    assert d.tau_clean == 0.07 and d.tau_boundary == 0.07
    clean, robust = torch.tensor([0.9, 0.8, 0.6]), torch.tensor([0.5, 0.5, 0.2])
    d.update(clean, robust, epoch=1)
    # γ0 = e - mean(e) - 0.07, γ1 = b - mean(b) - 0.07 (e = [0.1,0.2,0.4], b = [0.4,0.3,0.4])
    g0 = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64) - 0.7 / 3 - 0.07
    g1 = torch.tensor([0.4, 0.3, 0.4], dtype=torch.float64) - 1.1 / 3 - 0.07
    assert close(d.lam0, (0.05 * g0).clamp(min=0))  # [0, 0, 0.05·0.09667]: under the budget
    assert close(d.lam1, (0.1 * g1).clamp(min=0))  # all violations negative -> zero
    assert close(d.lam2, 0.2 * g1)  # λ2 is not clamped
    y = torch.tensor([0, 1, 2])
    eps, alpha = d.sample_eps(y)
    mult = torch.exp(2 * 0.2 * g1).clamp(0.98, 3.0)
    assert close(eps, EPS * mult, 1e-7)
    assert abs(alpha - EPS * float(mult.max()) / 4) < 1e-9
    # the rates halve every 40 epochs: the same violations at epoch 40 move λ2 by half as much
    before = d.lam2.clone()
    d.update(clean, robust, epoch=40)
    assert close(d.lam2 - before, 0.1 * g1)


def test_frl_rw_keeps_threat_eps_and_weights_loss():
    d = build_defense("frl-rw", {}, ctx_for(3))
    assert d.sample_eps(torch.tensor([0, 1])) == (EPS, ALPHA)
    d.lam0 = torch.tensor([0.3, 0.0, 0.15], dtype=torch.float64)
    d.lam1 = torch.tensor([0.0, 0.2, 0.0], dtype=torch.float64)
    model = linear()
    x, y = toy_batch()
    x_adv = (x + 0.03).clamp(0, 1)
    out = d.loss(model, x, y, x_adv)
    ce = F.cross_entropy(model(x), y, reduction="none")
    kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="none").sum(1)
    w0 = torch.tensor([1 / 3 + 0.15, 1 / 3 - 0.15, 1 / 3])[y]
    w1 = torch.tensor([1 / 3 - 0.2 / 3, 1 / 3 + 0.4 / 3, 1 / 3 - 0.2 / 3])[y]
    expected = (w0 * ce).sum() / w0.sum() + 1.5 * (w1 * kl).sum() / w1.sum()
    assert close(out.loss, expected, 1e-5)


def test_frl_initial_update_runs_before_the_first_step():
    x, y = toy_batch(30)
    d = build_defense("frl-rw", {"val_steps": 2}, ctx_for(3, val=lambda bs: iter([(x, y, torch.arange(30))])))
    model = linear()
    d.on_train_start(model)  # the trainer calls it with the bare module before the first step
    assert d.updates == 1
    d.on_epoch_start(0)
    d.training_step(model, x, y)
    d.on_train_start(model)  # a resumed session: not repeated
    assert d.updates == 1  # only once


# -- CFA ------------------------------------------------------------------------------
def test_cfa_class_eps_and_beta_by_hand():
    t = torch.tensor([0.2, 0.5, 0.7])
    assert close(cfa_class_eps(t, EPS, 0.5), [0.7 * EPS, 1.0 * EPS, 1.2 * EPS])
    assert close(cfa_class_beta(t, 6.0), [4.2, 6.0, 7.2])


def test_cfa_trades_ccm_ccr_in_the_defense():
    d = build_defense("cfa", {"base": "trades"}, ctx_for(3))
    y = torch.tensor([0, 1, 2])
    assert d.sample_eps(y) == (EPS, ALPHA)  # no statistics yet
    d.on_epoch_end(stats(0, train_robust=[0.2, 0.5, 0.7]))
    d.on_epoch_start(1)
    eps, alpha = d.sample_eps(y)
    assert close(eps, [0.5 * EPS, 0.8 * EPS, 1.0 * EPS], 1e-7) and alpha == ALPHA  # λ1 = 0.3 for TRADES
    model = linear()
    x, yb = toy_batch()
    x_adv = (x - 0.02).clamp(0, 1)
    out = d.loss(model, x, yb, x_adv)
    ce = F.cross_entropy(model(x), yb, reduction="none")
    kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="none").sum(1)
    b = torch.tensor([4.2, 6.0, 7.2])[yb]
    assert close(out.loss, ((ce + b * kl) / (1 + b)).mean(), 1e-5)


def test_cfa_pgd_at_lambda_and_released_defaults():
    d = build_defense("cfa", {}, ctx_for(3))
    d.on_epoch_end(stats(0, train_robust=[0.2, 0.5, 0.7]))
    d.on_epoch_start(1)
    assert close(d.sample_eps(torch.tensor([0, 2]))[0], [0.7 * EPS, 1.2 * EPS], 1e-7)  # λ1 = 0.5
    r = build_defense("cfa", {"released_defaults": True}, ctx_for(3))
    assert (r.fawa_decay, r.fawa_threshold, r.adaptive_start) == (0.88, 0.24, 10)
    r.on_epoch_end(stats(0, train_robust=[0.2, 0.5, 0.7]))
    r.on_epoch_start(9)
    assert r.sample_eps(torch.tensor([0])) == (EPS, ALPHA)  # CCM only from epoch 10 in the released code
    r.on_epoch_start(10)
    assert close(r.sample_eps(torch.tensor([0]))[0], [0.7 * EPS], 1e-7)
    with pytest.raises(ConfigError):
        build_defense("cfa", {"base": "pgd-at", "ccr": True}, ctx_for(3))


def test_fawa_gate():
    assert not fawa_accepts([0.3, 0.19], epoch=60, threshold=0.2, start=50)
    assert fawa_accepts([0.3, 0.2], epoch=60, threshold=0.2, start=50)
    assert not fawa_accepts([0.3, 0.25], epoch=49, threshold=0.2, start=50)


def test_fawa_accepts_rejects_and_averages():
    d = build_defense("cfa", {"fawa_start": 2}, ctx_for(3))
    model = d.setup_model(linear())
    d.ctx.averages.attach(model)  # what the trainer does with its bare module
    fawa = d.ctx.averages["fawa"]

    def set_weights(v: float):
        with torch.no_grad():
            model.weight.fill_(v)
            model.bias.fill_(v)

    set_weights(1.0)
    d.on_epoch_end(stats(1, model=model, val_robust=[0.9, 0.9, 0.9]))  # before fawa_start: mirrors, not counted
    assert d.fawa_updates == 0 and torch.all(fawa.weight == 1.0)
    set_weights(2.0)
    log = d.on_epoch_end(stats(2, model=model, val_robust=[0.5, 0.3, 0.25]))  # accepted: initialises
    assert log["fawa_accepted"] and d.fawa_updates == 1 and torch.all(fawa.weight == 2.0)
    set_weights(4.0)
    log = d.on_epoch_end(stats(3, model=model, val_robust=[0.5, 0.1, 0.25]))  # worst class 0.1 < 0.2: rejected
    assert not log["fawa_accepted"] and torch.all(fawa.weight == 2.0)
    set_weights(6.0)
    d.on_epoch_end(stats(4, model=model, val_robust=[0.5, 0.3, 0.2]))  # accepted: 0.85·2 + 0.15·6
    assert d.fawa_updates == 2 and torch.allclose(fawa.weight, torch.full_like(fawa.weight, 2.6))
    assert torch.allclose(fawa.bias, torch.full_like(fawa.bias, 2.6))


# -- WAT ------------------------------------------------------------------------------
def test_wat_hedge_weights_by_hand():
    cum = wat_losses_with_mean(torch.tensor([1.0, 3.0], dtype=torch.float64))  # [1, 3, 2]
    assert close(cum, [1.0, 3.0, 2.0])
    e = [math.exp(0.1), math.exp(0.3), math.exp(0.2)]
    w = wat_hedge_weights(cum, eta=0.1, normaliser=2)
    assert close(w, [2 * v / sum(e) for v in e])
    w3 = wat_hedge_weights(cum, eta=0.1, normaliser=3)
    assert close(w3, [3 * v / sum(e) for v in e])
    assert close(wat_hedge_weights(torch.zeros(3), 0.1, 3), [1.0, 1.0, 1.0])  # uniform point of C+1


def test_wat_loss_and_epoch_update():
    x, y = toy_batch(30)
    d = build_defense("wat", {}, ctx_for(3, val=lambda bs: iter([(x, y, torch.arange(30))])))
    assert torch.equal(d.weights, torch.ones(4, dtype=torch.float64))  # weights start at 1
    model = linear()
    d.weights = torch.tensor([0.5, 1.0, 1.5, 0.25], dtype=torch.float64)
    x_adv = (x + 0.02).clamp(0, 1)
    out = d.loss(model, x, y, x_adv)
    ce = F.cross_entropy(model(x), y, reduction="none")
    kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="none").sum(1)
    w = torch.tensor([0.5, 1.0, 1.5])[y] + 0.25
    assert close(out.loss, (w * (ce + 6 * kl)).mean(), 1e-5)
    log = d.on_epoch_end(stats(0, model=model))
    c = torch.tensor(log["wat_val_class_loss"], dtype=torch.float64)
    expected = 3 * torch.softmax(0.1 * torch.cat([c, c.mean()[None]]), 0)
    assert close(d.weights, expected) and abs(float(d.weights.sum()) - 3.0) < 1e-9


# -- DAFA -----------------------------------------------------------------------------
P3 = [[0.6, 0.3, 0.1],
      [0.2, 0.5, 0.3],
      [0.1, 0.1, 0.8]]


def test_dafa_weights_3x3_by_hand():
    # diagonal [0.6, 0.5, 0.8]: class 1 hardest, class 2 easiest.
    # W0 = 1 - p1(0)·p0(0) [0.6>0.5] + p0(2)·p2(2) [0.6<0.8] = 1 - 0.2·0.6 + 0.1·0.8 = 0.96
    # W1 = 1 + p1(0)·p0(0) + p1(2)·p2(2) = 1 + 0.12 + 0.24 = 1.36
    # W2 = 1 - p0(2)·p2(2) - p1(2)·p2(2) = 1 - 0.08 - 0.24 = 0.68
    assert close(dafa_weights(torch.tensor(P3), lam=1.0), [0.96, 1.36, 0.68])
    assert close(dafa_weights(torch.tensor(P3), lam=1.5), [1 - 1.5 * 0.04, 1 + 1.5 * 0.36, 1 - 1.5 * 0.32])
    # λ = 5 drives W2 to 1 - 5·0.32 = -0.6: clamped at the floor
    assert close(dafa_weights(torch.tensor(P3), lam=5.0, floor=0.05), [0.8, 2.8, 0.05])
    # equal diagonals transfer nothing
    assert close(dafa_weights(torch.tensor([[0.5, 0.5], [0.5, 0.5]]), lam=1.0), [1.0, 1.0])


def test_dafa_warmup_then_fixed_weights():
    d = build_defense("dafa", {"warmup_epochs": 2}, ctx_for(3))
    y = torch.tensor([0, 1, 2])
    assert d.on_epoch_end(stats(0, probs=P3)) == {} and d.weights is None
    assert d.sample_eps(y) == (EPS, ALPHA)
    d.on_epoch_end(stats(1, probs=P3))  # the last warm-up epoch records p and fixes W
    assert close(d.weights, [0.96, 1.36, 0.68])
    d.on_epoch_end(stats(2, probs=[[1 / 3] * 3] * 3))  # W stays fixed
    assert close(d.weights, [0.96, 1.36, 0.68])
    eps, alpha = d.sample_eps(y)
    assert close(eps, [0.96 * EPS, 1.36 * EPS, 0.68 * EPS], 1e-7)
    assert close(alpha, [0.96 * ALPHA, 1.36 * ALPHA, 0.68 * ALPHA], 1e-7)
    model = linear()
    x, yb = toy_batch()
    x_adv = (x + 0.02).clamp(0, 1)
    out = d.loss(model, x, yb, x_adv)
    ce = F.cross_entropy(model(x), yb, reduction="none")
    kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="none").sum(1)
    w = torch.tensor([0.96, 1.36, 0.68])[yb]
    assert close(out.loss, (w * ce).mean() + 6 * kl.mean(), 1e-5)


# -- CFOL -----------------------------------------------------------------------------
def test_cfol_distribution_and_exp3_step_by_hand():
    p = cfol_distribution(torch.tensor([0.0, math.log(3.0)]))  # softmax [0.25, 0.75]
    assert close(p, [0.25 + 0.125, 0.25 + 0.375])
    w = cfol_exp3_update(torch.zeros(3), torch.tensor([0, 1, 1, 2]), torch.tensor([True, True, False, True]),
                         torch.tensor([0.5, 0.25, 0.25]), eta=0.01)
    assert close(w, [0.01 / 0.5, 0.01 / 0.25, 0.01 / 0.25])


def test_cfol_sampler_distribution_and_determinism():
    labels = torch.tensor([0] * 30 + [1] * 60 + [2] * 10)
    probs = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    n = 30000
    order = sample_by_class(labels, probs, n, torch.Generator().manual_seed(0))
    assert order.shape == (n,) and order.dtype == torch.long
    freq = torch.bincount(labels[order], minlength=3).double() / n
    assert torch.all((freq - probs).abs() < 4 * torch.sqrt(probs * (1 - probs) / n))  # 4σ
    within = torch.bincount(order[labels[order] == 2], minlength=100)[90:].double()  # class 2: positions 90-99
    assert within.min() > 0.7 * within.mean()  # uniform inside the class
    again = sample_by_class(labels, probs, n, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)
    empty = sample_by_class(torch.tensor([0, 0, 2]), torch.tensor([0.3, 0.4, 0.3]), 500, torch.Generator().manual_seed(1))
    assert set(torch.tensor([0, 0, 2])[empty].tolist()) <= {0, 2}  # a class with no example is never drawn


def test_cfol_defense_updates_and_resumes_bit_exactly():
    labels = torch.arange(40) % 4
    d = build_defense("cfol", {"eta": 0.01}, ctx_for(4))
    gen = torch.Generator().manual_seed(3)
    d.sample_order(0, labels, gen)
    q = d.q.clone()
    assert close(q, [0.25] * 4)
    logits = torch.zeros(4, 4)
    logits[:, 0] = 1.0  # predicts class 0 for everything
    d.on_batch_end(torch.tensor([0, 1, 2, 2]), logits)
    assert close(d.w, [0.0, 0.01 / 0.25, 0.02 / 0.25, 0.0])
    fresh = build_defense("cfol", {"eta": 0.01}, ctx_for(4))
    fresh.load_state_dict(d.state_dict())
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(d.sample_order(1, labels, g1), fresh.sample_order(1, labels, g2))
    assert close(d.q, cfol_distribution(d.w))


def test_cfol_rw_weights_loss_and_uses_class_frequencies():
    d = build_defense("cfol-rw", {"eta": 0.01}, ctx_for(2, counts=[30, 10]))
    assert d.sample_order(0, torch.tensor([0, 1]), torch.Generator()) is None
    assert close(d.q, [0.75, 0.25])
    d.on_batch_end(torch.tensor([0, 1]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # sample 0 wrong
    assert close(d.w, [0.01 / 0.75, 0.0])
    model = linear(2)
    x, y = toy_batch(8, 2)
    out = d.loss(model, x, y, x)
    p = cfol_distribution(d.w)
    w = 2 * p.float()[y]
    assert close(out.loss, (w * F.cross_entropy(model(x), y, reduction="none")).mean(), 1e-6)


# -- class weights --------------------------------------------------------------------
def test_class_weights_loss_and_validation():
    d = build_defense("class-weights", {"weights": [1, 2, 0.5]}, ctx_for(3))
    model = linear()
    x, y = toy_batch()
    out = d.loss(model, x, y, x)
    ce = F.cross_entropy(model(x), y, reduction="none")
    assert close(out.loss, (torch.tensor([1.0, 2.0, 0.5])[y] * ce).mean(), 1e-6)
    plain = build_defense("class-weights", {}, ctx_for(3))
    assert close(plain.loss(model, x, y, x).loss, ce.mean(), 1e-6)
    with pytest.raises(ConfigError, match="3 entries"):
        build_defense("class-weights", {"weights": [1, 2]}, ctx_for(3))
    with pytest.raises(ConfigError, match="positive"):
        build_defense("class-weights", {"weights": [1, 0, 1]}, ctx_for(3))


# -- calibration ----------------------------------------------------------------------
CENTERS = torch.tensor([[0.2, 0.2], [0.8, 0.2], [0.5, 0.8]])


class NearestCenter(nn.Module):
    """Linear nearest-centre classifier z_k = 2c_k·x − ‖c_k‖² + handicap_k."""

    def __init__(self, handicap: list[float]):
        super().__init__()
        self.head = nn.Linear(2, 3)
        with torch.no_grad():
            self.head.weight.copy_(2 * CENTERS)
            self.head.bias.copy_(-(CENTERS ** 2).sum(1) + torch.tensor(handicap))

    def forward(self, x):
        return self.head(x)


def toy_validation(n_per_class: int = 60):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([c + 0.06 * torch.randn(n_per_class, 2, generator=g) for c in CENTERS]).clamp(0, 1)
    return x, torch.arange(3).repeat_interleave(n_per_class)


@pytest.mark.parametrize("method", ["bias", "norm"])
def test_calibration_lifts_the_handicapped_class(method):
    from rfbench.benchmark.eval.calibrate import CalibrationConfig, fit_calibration

    x, y = toy_validation()
    model = NearestCenter([-0.25, 0.0, 0.0])  # class 0 handicapped: its region is too small
    cfg = CalibrationConfig(method=method, norm="linf", eps=0.05, alpha=0.0125, steps=5, targets=2, grid=21, passes=4, rounds=1)
    result = fit_calibration(model, x, y, cfg, num_classes=3)
    before, after = min(result.before["robust_acc"]), min(result.after["robust_acc"])
    assert result.before["robust_acc"].index(before) == 0  # the handicap makes class 0 the worst
    assert after > before + 0.2  # and the calibration lifts it
    if method == "bias":  # the known answer: class 0's bias goes up relative to the others
        assert float(result.bias[0] - result.bias[1:].mean()) > 0.1
    # a fair model is not made worse
    fair = fit_calibration(NearestCenter([0.0, 0.0, 0.0]), x, y, cfg, num_classes=3)
    assert min(fair.after["robust_acc"]) >= min(fair.before["robust_acc"])


def test_calibration_files_round_trip(tmp_path):
    from rfbench.benchmark.eval.calibrate import (
        CalibratedModel,
        CalibrationConfig,
        CalibrationResult,
        is_calibration_dir,
        load_calibrated_model,
        load_calibration,
        save_calibration,
    )
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.core.config import to_dict
    from rfbench.core.io import save_checkpoint
    from rfbench.models import create_model

    # a minimal run directory as `rfbench train` writes it
    run = tmp_path / "run"
    model = create_model("smallcnn", 10, 1)
    meta = {"num_classes": 10, "in_channels": 1, "mean": [0.0], "std": [1.0], "train_counts": [5] * 10,
            "threat": {"norm": "linf", "eps": 0.1, "alpha": 0.025, "steps": 10}}
    save_checkpoint(run / "checkpoint-best.pt", {"model": model.state_dict(), "epoch": 1, "meta": meta,
                                                 "config": to_dict(TrainConfig(defense="pgd-at"))})
    scale, bias = torch.linspace(0.5, 1.5, 10), torch.linspace(-1, 1, 10)
    result = CalibrationResult("bias", scale, bias, {"robust_acc": [0.0]}, {"robust_acc": [0.0]}, [])
    out = save_calibration(tmp_path / "cal", result, run, "best", CalibrationConfig())
    assert is_calibration_dir(out) and not is_calibration_dir(run)
    state = load_calibration(out)
    assert torch.equal(state["scale"], scale) and torch.equal(state["bias"], bias)
    wrapped, info = load_calibrated_model(out)
    assert isinstance(wrapped, CalibratedModel) and info["calibration"]["method"] == "bias"
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), model.eval()(x) * scale + bias, atol=1e-5)
    save_checkpoint(tmp_path / "bad" / "calibration.pt", {"format": "other", "scale": scale, "bias": bias})
    with pytest.raises(CheckpointError):
        load_calibration(tmp_path / "bad")


def test_an_absent_class_reaches_cfa_and_dafa_as_nan_and_takes_their_absent_class_branch():
    """The trainer's epoch statistics give NaN (not 0) for a class with no training example this epoch;
    CFA keeps that class's previous t_k, DAFA counts its probabilities as uniform."""
    from rfbench.benchmark.train.statistics import EpochAccumulator

    acc = EpochAccumulator(3, torch.device("cpu"))
    y = torch.tensor([0, 0, 1, 1])  # class 2 absent
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    acc.add(y, logits, 1.0, {})
    s = acc.summary()
    assert s["robust_acc"][:2] == [0.5, 0.5] and math.isnan(s["robust_acc"][2])
    assert all(math.isnan(p) for p in s["adv_probs"][2]) and sum(s["adv_probs"][0]) == pytest.approx(1.0)

    cfa = build_defense("cfa", {"base": "trades"}, ctx_for(3))
    cfa.on_epoch_end(stats(0, train_robust=[0.2, 0.4, 0.6]))
    out = cfa.on_epoch_end(stats(1, train_robust=s["robust_acc"]))
    assert out["cfa_t"] == pytest.approx([0.5, 0.5, 0.6])  # class 2 keeps its previous value
    first = build_defense("cfa", {"base": "trades"}, ctx_for(3)).on_epoch_end(stats(0, train_robust=s["robust_acc"]))
    assert first["cfa_t"] == pytest.approx([0.5, 0.5, 0.5])  # no previous value: the mean of the others

    dafa = build_defense("dafa", {"warmup_epochs": 1}, ctx_for(3))
    dafa.on_epoch_end(stats(0, probs=s["adv_probs"]))
    assert close(dafa.probs[2], [1 / 3] * 3) and torch.isfinite(dafa.weights).all()
