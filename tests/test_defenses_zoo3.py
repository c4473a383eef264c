"""The maths of AWP, TAET and RobustLT against hand computations and naive replays.

Hand values use plain Python floats or literal loops that follow each method's
formula (defenses/awp.py, defenses/taet.py, defenses/robustlt.py docstrings) one
term at a time, never the vectorised code under test.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from rfbench.benchmark.data import iterate_batches, load_dataset
from rfbench.defenses import Threat, TrainContext, build_defense
from rfbench.defenses.awp import WeightPerturbation, awp_active, awp_direction, perturbed_names
from rfbench.defenses.robustlt import classwise_eps_max, warmup_intensity
from rfbench.defenses.taet import harl
from rfbench.models import create_model


def ctx_for(counts, epochs=10, eps=0.1, alpha=0.025, steps=2, seed=0) -> TrainContext:
    return TrainContext(num_classes=len(counts), train_counts=list(counts),
                        threat=Threat("linf", eps=eps, alpha=alpha, steps=steps), epochs=epochs,
                        generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def bundle():
    return load_dataset("fashion-mnist", imbalance_ratio=50)


@pytest.fixture(scope="module")
def batch(bundle):
    y = bundle.train.y
    pos = torch.cat([torch.nonzero(y == c).flatten()[:3] for c in range(10)])
    x, yb, _ = next(iterate_batches(bundle.train.subset(pos), 30))
    return x, yb


def model_for(bundle, seed=0):
    torch.manual_seed(seed)
    return create_model("smallcnn", 10, 1, bundle.mean, bundle.std)


# -- AWP ---------------------------------------------------------------------------------------

def test_awp_direction_by_hand():
    w = torch.tensor([[3.0, 4.0]])  # ‖w‖ = 5
    g = torch.tensor([[0.0, 2.0]])  # ‖g‖ = 2
    (v,) = awp_direction([w], [g], gamma=0.01)
    assert torch.allclose(v, torch.tensor([[0.0, 0.05]]))  # 0.01·5·g/2


def test_awp_warmup_is_a_fraction_of_the_budget():
    # released TRADES-AWP: 1-based epoch >= 10 of 200, i.e. 0-based epochs 0..8 without AWP
    assert not awp_active(8, 200, 0.045) and awp_active(9, 200, 0.045)
    assert not awp_active(0, 20, 0.045) and awp_active(1, 20, 0.045)  # round(0.9) = 1
    assert awp_active(0, 3, 0.0)


def test_awp_perturbs_only_multidim_weights(bundle):
    names = perturbed_names(model_for(bundle))
    assert names and all(n.endswith("weight") for n in names)
    assert all(p.dim() > 1 for n, p in model_for(bundle).named_parameters() if n in names)


def _naive_awp_sgd_step(model, x, y, x_adv, gamma, lr):
    """Literal AWP step: v_l from the adversarial CE at w (proxy), step at w+v, remove v."""
    m = copy.deepcopy(model)
    proxy = copy.deepcopy(model)
    proxy.train()
    loss = F.cross_entropy(proxy(x_adv), y)
    names = [n for n, p in proxy.named_parameters() if p.dim() > 1 and n.endswith("weight")]
    pp = dict(proxy.named_parameters())
    grads = torch.autograd.grad(loss, [pp[n] for n in names])
    mp = dict(m.named_parameters())
    vs = {}
    for n, g in zip(names, grads):
        wn = math.sqrt(float((mp[n].detach() ** 2).sum()))
        gn = math.sqrt(float((g ** 2).sum()))
        vs[n] = gamma * wn / (gn + 1e-20) * g
    with torch.no_grad():
        for n, v in vs.items():
            mp[n].add_(v)
    m.train()
    F.cross_entropy(m(x_adv), y).backward()
    with torch.no_grad():
        for p in m.parameters():
            p.sub_(lr * p.grad)
        for n, v in vs.items():
            mp[n].sub_(v)
    return m


def test_awp_at_step_equals_naive_replay(bundle, batch):
    x, y = batch
    model = model_for(bundle)
    ctx = ctx_for(bundle.train_counts, epochs=3, seed=7)
    d = build_defense("awp-at", {"awp_gamma": 0.02}, ctx)
    settings = d.weight_perturbation()
    assert settings is not None and settings.gamma == 0.02
    awp = WeightPerturbation(settings.gamma, settings.warmup)  # what the trainer's AWP hook runs
    ref_model = copy.deepcopy(model)
    x_adv = d.perturb(model, x, y)  # the same attack, replayed for the reference
    ctx.generator.manual_seed(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x_adv_step = d.perturb(model, x, y)  # the trainer's step: inner maximisation, the hook's before_loss, loss
    awp.apply(d, model, x, y, None, x_adv_step)
    model.train()
    out = d.loss(model, x, y, x_adv_step)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    awp.remove()  # the hook's after_optimizer_step
    d.on_batch_end(y, out.adv_logits)
    ref = _naive_awp_sgd_step(ref_model, x, y, x_adv, gamma=0.02, lr=0.05)
    for (n, p), (_, q) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5, rtol=1e-4), n
    # and AWP changed the step: plain PGD-AT lands elsewhere
    plain = copy.deepcopy(ref_model)
    plain.train()
    F.cross_entropy(plain(x_adv), y).backward()
    with torch.no_grad():
        for p in plain.parameters():
            p.sub_(0.05 * p.grad)
    diff = max(float((p - q).detach().abs().max()) for p, q in zip(model.parameters(), plain.parameters()))
    assert diff > 1e-4


def test_awp_removal_restores_weights_without_a_step(bundle, batch):
    x, y = batch
    model = model_for(bundle)
    before = copy.deepcopy(model.state_dict())
    d = build_defense("standard", {}, ctx_for(bundle.train_counts))
    awp = WeightPerturbation(gamma=0.01)
    awp.apply(d, model, x, y, None, None)  # standard has its own training_step: replayed on the proxy
    d.training_step(model, x, y)
    moved = max(float((model.state_dict()[k] - before[k]).abs().max()) for k in before)
    assert moved > 0  # the loss was taken at w + v
    awp.remove()  # what the hook does for a skipped batch (no optimizer step)
    for k in before:
        if before[k].is_floating_point():
            assert torch.allclose(model.state_dict()[k], before[k], atol=1e-7), k


# -- TAET --------------------------------------------------------------------------------------

def test_harl_by_hand_released_and_skip():
    ce = torch.tensor([1.0, 3.0, 2.0])
    y = torch.tensor([0, 0, 1])  # class 2 absent: L = [2, 2, 0]
    t = harl(ce, y, 3)
    mean = 4 / 3
    var = ((2 - mean) ** 2 * 2 + mean ** 2) / 3
    rare = 0.5 ** 2 + 0.5 ** 2
    assert t["balanced"].item() == pytest.approx(0.1 * mean)
    assert t["hierarchical"].item() == pytest.approx(0.1 * var)
    assert t["rare"].item() == pytest.approx(0.1 * rare)
    assert t["total"].item() == pytest.approx(0.1 * (mean + var + rare))
    s = harl(ce, y, 3, absent_classes="skip")  # L = [2, 2]
    assert s["total"].item() == pytest.approx(0.1 * 2 + 0 + 0.1 * 0.5)


def test_taet_phases(bundle, batch):
    x, y = batch
    model = model_for(bundle)
    d = build_defense("taet", {}, ctx_for(bundle.train_counts, epochs=10))
    d.on_epoch_start(3)  # round(0.4·10) = 4 stabilisation epochs: 0..3
    out = d.training_step(model, x, y)
    model.train()
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)
    d.on_epoch_start(4)
    out = d.training_step(model, x, y)
    assert set(out.terms) == {"balanced", "hierarchical", "rare"}
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.terms.values()), rel=1e-5)


# -- RobustLT ----------------------------------------------------------------------------------

def test_robustlt_classwise_budget_by_hand():
    eps_max = classwise_eps_max([100, 10], eps=0.1, alpha=0.3)
    # s = [0, sqrt(ln 10)], τ = 0.3/((10/110)·s_1): ε_1 = 0.07 + 0.3·0.1·11 = 0.40
    assert eps_max[0] == pytest.approx(0.07) and eps_max[1] == pytest.approx(0.40)
    assert (100 * eps_max[0] + 10 * eps_max[1]) / 110 == pytest.approx(0.1)  # mean budget kept
    assert classwise_eps_max([5, 5], 0.1, 0.3) == [0.1, 0.1]


def test_robustlt_warmup_and_sample_eps(bundle):
    assert warmup_intensity(0, 10, 0.8) == 0.0
    assert warmup_intensity(4, 10, 0.8) == pytest.approx(0.5)
    assert warmup_intensity(9, 10, 0.8) == 1.0
    counts = [100, 10]
    d = build_defense("robustlt", {}, ctx_for(counts, epochs=10, eps=0.1, alpha=0.025))
    d.on_epoch_start(4)
    eps, alpha = d.sample_eps(torch.tensor([0, 1, 1]))
    assert torch.allclose(eps, torch.tensor([0.035, 0.2, 0.2]))
    assert torch.allclose(alpha, eps / 0.1 * 0.025)


def test_awp_run_option_wraps_any_defense(tmp_path):
    """``awp_gamma`` in the run config turns any defense into its AWP version and changes the weights."""
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.benchmark.train.trainer import Trainer, train

    tiny = {"dataset": "fashion-mnist", "max_train_samples": 128, "epochs": 1, "batch_size": 64, "steps": 1,
            "val_per_class": 3, "val_steps": 1, "model_kwargs": {"width": 0.25}, "device": "cpu",
            "optimizer": "sgd", "lr": 0.05, "defense": "cb-at"}
    t = Trainer(TrainConfig(**tiny, awp_gamma=0.01, out=str(tmp_path / "awp")), quiet=True)
    from rfbench.benchmark.train.hooks import AWPHook
    from rfbench.defenses.cb_at import ClassBalancedAT
    (hook,) = t.hooks
    assert isinstance(hook, AWPHook) and t.defense.name == "cb-at" and hook.settings.gamma == 0.01
    assert type(t.defense) is ClassBalancedAT  # a hook, not a class swap
    w_awp = torch.load(train(TrainConfig(**tiny, awp_gamma=0.01, out=str(tmp_path / "a")), quiet=True)
                       / "checkpoint-last.pt", weights_only=True)["model"]
    w_plain = torch.load(train(TrainConfig(**tiny, out=str(tmp_path / "p")), quiet=True)
                         / "checkpoint-last.pt", weights_only=True)["model"]
    assert any(not torch.equal(w_awp[k], w_plain[k]) for k in w_plain if w_plain[k].is_floating_point())


# -- budget fractions (DAFA warm-up, CFA's FAWA start) -------------------------------------------

def test_dafa_and_cfa_schedules_are_fractions_of_the_budget():
    counts = [10] * 10
    assert build_defense("dafa", {}, ctx_for(counts, epochs=110)).warmup_epochs() == 70  # the paper's 70 of 110
    assert build_defense("dafa", {}, ctx_for(counts, epochs=2)).warmup_epochs() == 1  # round(1.27)
    assert build_defense("dafa", {}, ctx_for(counts, epochs=1)).warmup_epochs() == 1  # at least one epoch
    assert build_defense("dafa", {"warmup_epochs": 5}, ctx_for(counts, epochs=110)).warmup_epochs() == 5
    cfa = build_defense("cfa", {}, ctx_for(counts, epochs=200))
    assert cfa.cfg.fawa_start is None and round(cfa.cfg.fawa_start_fraction * 200) == 50


def test_milestones_as_fractions_of_the_budget():
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.benchmark.train.schedule import lr_at, resolve_milestones
    from rfbench.core.config import from_dict
    from rfbench.core.errors import ConfigError

    assert resolve_milestones([], [0.75, 0.9], 100) == [75, 90]  # the paper's 75/90 of 100
    assert resolve_milestones([], [0.75, 0.9], 4) == [3, 4]
    assert resolve_milestones([], [0.1], 3) == [1]  # never epoch 0
    assert resolve_milestones([60], [0.75], 100) == [60]
    ms = resolve_milestones([], [0.5], 4)
    assert [lr_at(e, 0.1, "multistep", 4, ms, 0.1) for e in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ConfigError):
        from_dict(TrainConfig, {"milestones": [3], "milestone_fractions": [0.5]})
    with pytest.raises(ConfigError):
        from_dict(TrainConfig, {"milestone_fractions": [1.5]})
