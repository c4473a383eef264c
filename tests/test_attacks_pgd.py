"""The PGD family against independent references (torchattacks 3.5.1), on real Fashion-MNIST images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks

from rfbench.attacks import ATTACKS, FGSM, PGD, TemperaturePGD, build_attack, parse_spec
from rfbench.attacks.core import pgd
from rfbench.benchmark.data import iterate_batches
from rfbench.benchmark.data.subsets import per_class_subset
from rfbench.benchmark.eval.harness import perturbation_norm, verify_in_ball
from rfbench.core.errors import RfbenchError
from rfbench.core.threat import ThreatDefaults, resolve_threat

EPS, ALPHA = 0.1, 0.025


@pytest.fixture(scope="module")
def batch(fmnist):
    """40 real test images, 4 per class."""
    x, y, _ = next(iterate_batches(per_class_subset(fmnist.test, 4, seed=1), 40))
    return x, y


def _ta(attack_cls, model, **kw):
    atk = attack_cls(model, **kw)
    atk.set_model_training_mode(model_training=False)
    return atk


@pytest.mark.parametrize("steps", [1, 7])
def test_pgd_linf_equals_torchattacks(fmnist_cnn, batch, steps):
    x, y = batch
    torch.manual_seed(11)
    ours = PGD(fmnist_cnn, eps=EPS, alpha=ALPHA, steps=steps, early_stop=False)(x, y)
    torch.manual_seed(11)
    ref = _ta(torchattacks.PGD, fmnist_cnn, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)(x, y)
    assert torch.equal(ours, ref)
    assert (ours != x).any()


def test_pgd_l2_equals_torchattacks(fmnist_cnn, batch):
    x, y = batch
    torch.manual_seed(5)
    ours = PGD(fmnist_cnn, eps=1.5, alpha=0.3, steps=6, norm="l2", early_stop=False)(x, y)
    torch.manual_seed(5)
    ref = _ta(torchattacks.PGDL2, fmnist_cnn, eps=1.5, alpha=0.3, steps=6, random_start=True)(x, y)
    assert torch.equal(ours, ref)


def test_fgsm_is_one_pgd_step_and_matches_torchattacks(fmnist_cnn, batch):
    x, y = batch
    ours = FGSM(fmnist_cnn, eps=EPS)(x, y)
    one_step = pgd(fmnist_cnn, x, y, eps=EPS, alpha=EPS, steps=1, start="none")
    assert torch.equal(ours, one_step)
    ref = _ta(torchattacks.FGSM, fmnist_cnn, eps=EPS)(x, y)
    # torchattacks computes clamp(x + eps·sign g); the core clamps the perturbation first,
    # (x + eps·s) − x may differ from eps·s by one float32 rounding.
    assert torch.allclose(ours, ref, rtol=0, atol=1e-7)
    with torch.no_grad():
        assert torch.equal(fmnist_cnn(ours).argmax(1), fmnist_cnn(ref).argmax(1))
    # hand reference: the sign of the input gradient of the mean CE
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(fmnist_cnn(xr), y), xr)
    assert torch.allclose(ours, (x + EPS * g.sign()).clamp(0, 1), rtol=0, atol=1e-7)


def test_temperature_pgd_with_t1_is_pgd(fmnist_cnn, batch):
    x, y = batch
    kw = dict(eps=EPS, alpha=ALPHA, steps=5)
    base = PGD(fmnist_cnn, **kw)(x, y, seed=3)
    assert torch.equal(TemperaturePGD(fmnist_cnn, T=1.0, **kw)(x, y, seed=3), base)
    assert not torch.equal(TemperaturePGD(fmnist_cnn, T=0.1, **kw)(x, y, seed=3), base)  # T does change the direction


def test_confidence_temperature_runs_and_stays_in_ball(fmnist_cnn, batch):
    x, y = batch
    atk = TemperaturePGD(fmnist_cnn, eps=EPS, alpha=ALPHA, steps=3, T=0.2, tmode="confidence")
    x_adv = atk(x, y, seed=0)
    verify_in_ball(x_adv, x, EPS, "linf", atk.label)
    assert atk.label == "temperature-pgd-3-T0.2-conf"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_eps_is_respected(fmnist_cnn, batch, norm):
    x, y = batch
    scale = 0.1 if norm == "linf" else 2.0
    eps = scale * torch.linspace(0.05, 1.0, len(y))
    x_adv = pgd(fmnist_cnn, x, y, eps=eps, alpha=eps / 3, steps=6, norm=norm, start="uniform")
    d = perturbation_norm(x_adv, x, norm)
    assert (d <= eps.double() + 1e-6).all()
    assert (d >= 0.5 * eps.double()).float().mean() > 0.9  # each sample uses its own radius, not the smallest


def test_early_stop_gives_the_same_robust_answer(fmnist_cnn, batch):
    """Early stop says "broken" exactly when some iterate of the full run fooled the model."""
    x, y = batch
    kw = dict(eps=0.05, alpha=0.0125, steps=6)
    predict = lambda z: fmnist_cnn(z).detach().argmax(1)
    es_fooled = predict(PGD(fmnist_cnn, early_stop=True, **kw)(x, y, seed=9)) != y
    any_fooled = torch.zeros_like(es_fooled)
    for k in range(kw["steps"] + 1):  # iterate k of the same seeded trajectory (k = 0: the random start)
        xk = pgd(fmnist_cnn, x, y, eps=kw["eps"], alpha=kw["alpha"], steps=k, generator=torch.Generator().manual_seed(9))
        any_fooled |= predict(xk) != y
    final_fooled = predict(xk) != y
    assert torch.equal(es_fooled, any_fooled)
    assert (es_fooled >= final_fooled).all()
    assert 0 < int(es_fooled.sum()) < len(y)  # the comparison is not vacuous


def test_bf16_autocast_stays_in_the_ball(fmnist_cnn, batch):
    x, y = batch
    atk = PGD(fmnist_cnn, eps=EPS, alpha=ALPHA, steps=4)
    atk.autocast_dtype = torch.bfloat16
    x_adv = atk(x, y, seed=0)
    assert x_adv.dtype == torch.float32
    verify_in_ball(x_adv, x, EPS, "linf", atk.label)
    fp32 = PGD(fmnist_cnn, eps=EPS, alpha=ALPHA, steps=4)(x, y, seed=0)
    with torch.no_grad():  # bf16 steps are close enough to find about as many adversarial examples
        a = (fmnist_cnn(x_adv).argmax(1) != y).float().mean()
        b = (fmnist_cnn(fp32).argmax(1) != y).float().mean()
    assert abs(float(a - b)) <= 0.15


def test_attacks_leave_parameters_alone(fmnist_cnn, batch):
    x, y = batch
    for name in ("fgsm", "pgd", "cw", "temperature-pgd", "lsa"):
        atk = ATTACKS.get(name)(fmnist_cnn, eps=EPS)
        atk(x, y, seed=0)
    assert all(p.grad is None and p.requires_grad for p in fmnist_cnn.parameters())
    assert not fmnist_cnn.training


def test_restarts_keep_a_break_found_by_any_restart(fmnist_cnn, batch):
    x, y = batch
    kw = dict(eps=0.03, alpha=0.01, steps=2)
    with torch.no_grad():
        one = fmnist_cnn(PGD(fmnist_cnn, **kw)(x, y, seed=4)).argmax(1) != y
        three = fmnist_cnn(PGD(fmnist_cnn, restarts=3, **kw)(x, y, seed=4)).argmax(1) != y
    assert (three >= one).all()  # the first restart is the single run; later ones only add breaks


# -- specs and labels ----------------------------------------------------------
THREAT = resolve_threat(ThreatDefaults(norm="linf", eps=0.1, eval_steps=20, eval_alpha=0.025), "eval")


@pytest.mark.parametrize("spec,label", [
    ("fgsm", "fgsm"), ("pgd", "pgd-20"), ("pgd:steps=20", "pgd-20"), ("cw:steps=20", "cw-20"),
    ("temperature-pgd:T=0.5", "temperature-pgd-20-T0.5"), ("pgd:steps=50,restarts=5", "pgd-50-restarts=5"),
    ("pgd:eps=8/255", "pgd-20-eps=8/255"), ("autoattack:version=standard", "autoattack-standard"),
    ("autoattack:version=custom,attacks=apgd-ce+apgd-t", "autoattack-apgd-ce+apgd-t"),
])
def test_spec_labels(spec, label):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    assert build_attack(spec, model, THREAT).label == label


def test_spec_threat_defaults_and_overrides():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    a = build_attack("pgd", model, THREAT)
    assert (a.cfg.eps, a.cfg.alpha, a.cfg.steps, a.cfg.norm) == (0.1, 0.025, 20, "linf")
    b = build_attack("pgd:eps=0.2", model, THREAT)
    assert b.cfg.eps == 0.2 and b.cfg.alpha == pytest.approx(0.05)  # alpha keeps the protocol's alpha/eps
    c = build_attack("autoattack:version=custom,attacks=apgd-ce+apgd-t,steps=7", model, THREAT)
    assert c.cfg.attacks == ["apgd-ce", "apgd-t"] and c.cfg.steps == 7 and c.cfg.eps == 0.1
    assert "PGD(label='pgd-20'" in repr(a)


@pytest.mark.parametrize("spec,fragment", [
    ("pgd:stepz=3", "did you mean 'steps'"), ("pgd:steps", "not key=value"), ("pgd:steps=x", "integer"),
    ("nope", "unknown attack 'nope'"), ("autoattack:version=custom", "needs attacks="),
    ("pgd:norm=l2", "needs eps="), ("pgd:loss=foo", "must be one of"),
])
def test_spec_errors_are_one_line(spec, fragment):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(RfbenchError) as err:
        build_attack(spec, model, THREAT)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_parse_spec_keeps_raw_text():
    s = parse_spec(" cw:steps=20,kappa=10 ")
    assert s.name == "cw" and s.kwargs == {"steps": "20", "kappa": "10"}


# -- per-sample and shared loss inputs ----------------------------------------------
def test_shared_aux_is_never_sliced_even_when_the_batch_equals_the_number_of_classes():
    """A per-class tensor under any name reaches the loss whole, with or without early stop.

    The batch has as many samples as there are classes (the case shape guessing got wrong),
    and early stop drops samples from the working batch.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 2])
    table = torch.tensor([1.0, 2.0, 3.0])
    seen = []

    def loss(logits, yy, aux):
        seen.append((aux["table"].clone(), aux["row"].clone(), yy.clone()))
        return torch.nn.functional.cross_entropy(logits, yy, reduction="none") * aux["table"][yy]

    for early in (False, True):
        seen.clear()
        pgd(model, x, y, eps=0.5, alpha=0.1, steps=3, loss=loss, early_stop=early, aux={"row": y.float()},
            shared_aux={"table": table}, generator=torch.Generator().manual_seed(0))
        assert seen
        for t, row, yy in seen:
            assert torch.equal(t, table)  # shared: whole
            assert torch.equal(row, yy.float())  # per-sample: the rows still attacked


def test_aux_must_be_per_sample_and_names_must_not_clash():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="shared_aux"):
        pgd(model, x, y, eps=0.1, alpha=0.1, steps=1, aux={"class_weights": torch.ones(3)})
    with pytest.raises(ValueError, match="both"):
        pgd(model, x, y, eps=0.1, alpha=0.1, steps=1, aux={"w": torch.ones(2)}, shared_aux={"w": torch.ones(3)})


def test_sharded_generator_gives_each_rank_its_rows_of_the_single_process_start():
    """Inside a training batch each rank's start is its slice of the global start; outside it, a plain draw."""
    from rfbench.attacks.core import random_start
    from rfbench.benchmark.train.distributed import ShardedGenerator

    x = torch.rand(5, 1, 3, 3)
    whole = random_start(x, 0.1, "linf", "uniform", 0.0, torch.Generator().manual_seed(7))
    parts, states = [], []
    for offset, n in ((0, 3), (3, 2)):  # two ranks' tensor_split shards of 5
        g = ShardedGenerator(torch.Generator().manual_seed(7))
        with g.batch(5, offset, n):
            parts.append(random_start(x[offset:offset + n], 0.1, "linf", "uniform", 0.0, g))
        states.append(g.generator.get_state())
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(states[0], states[1])  # every rank's generator advanced alike
    g = ShardedGenerator(torch.Generator().manual_seed(7))
    assert torch.equal(random_start(x, 0.1, "linf", "uniform", 0.0, g), whole)  # outside a batch: unsharded
    with g.batch(5, 0, 3), pytest.raises(RuntimeError, match="4 rows"):
        random_start(x[:4], 0.1, "linf", "uniform", 0.0, g)  # another batch inside the step: refused, not mis-sliced


def test_lsa_is_temperature_pgd_at_one_over_alpha_bit_for_bit(fmnist_cnn, batch):
    """LSA = PGD on CE(10·z, y) (AT-BSL's eval.py) = Temperature-PGD at T = 0.1, same start, same steps."""
    from rfbench.attacks.named import LSA
    x, y = batch
    lsa = LSA(fmnist_cnn, eps=EPS, alpha=ALPHA, steps=5)
    tpgd = TemperaturePGD(fmnist_cnn, eps=EPS, alpha=ALPHA, steps=5, T=0.1)
    a, b = lsa(x, y, seed=4), tpgd(x, y, seed=4)
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= EPS + 1e-6 and not torch.equal(a, x)
    # independent reference: the released loop (uniform start, sign steps on CE(10 z), project, clamp)
    g = torch.Generator().manual_seed(4)
    xa = (x + torch.empty_like(x).uniform_(-EPS, EPS, generator=g)).clamp(0, 1)
    for _ in range(5):
        xa.requires_grad_(True)
        loss = F.cross_entropy(10.0 * fmnist_cnn(xa), y)
        grad, = torch.autograd.grad(loss, xa)
        xa = torch.min(torch.max(xa.detach() + ALPHA * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    ref = LSA(fmnist_cnn, eps=EPS, alpha=ALPHA, steps=5, early_stop=False)(x, y, seed=4)
    assert (ref - xa).abs().max() < 1e-5


def test_lsa_spec_defaults():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    a = build_attack("lsa", model, THREAT)
    assert (a.cfg.steps, a.cfg.scale, a.cfg.start, a.cfg.eps, a.cfg.alpha) == (20, 10.0, "uniform", 0.1, 0.025)
    assert a.label == "lsa-20-x10"
    assert build_attack("lsa:scale=5", model, THREAT).label == "lsa-20-x5"
    assert "lsa" in ATTACKS.names()
