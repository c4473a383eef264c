"""The AutoAttack adapter against pyautoattack 0.2.0 called directly, on a tiny model and real images."""

from __future__ import annotations

import logging

import pytest
import torch
from pyautoattack import AutoAttack as PackageAA
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

from rfbench.attacks import AutoAttack
from rfbench.attacks.core import frozen_params
from rfbench.benchmark.data import iterate_batches
from rfbench.benchmark.data.subsets import per_class_subset
from rfbench.benchmark.eval.harness import verify_in_ball
from rfbench.core.errors import ConfigError

EPS = 0.05
STEPS = 4
TARGETS = 3


@pytest.fixture(scope="module")
def batch(fmnist):
    """20 real test images, 2 per class."""
    x, y, _ = next(iterate_batches(per_class_subset(fmnist.test, 2, seed=2), 20))
    return x, y


def _direct(model, x, y, seed):
    """pyautoattack used by hand: custom APGD-CE + APGD-T (STEPS iterations, one restart, TARGETS target classes)."""
    aa = PackageAA(model, norm="Linf", eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], device="cpu", seed=seed)
    aa.apgd = APGDAttack(model, n_iter=STEPS, n_restarts=1, eps=EPS, norm="Linf", seed=seed, device="cpu", logger=aa.logger)
    aa.apgd_targeted = APGDAttack_targeted(model, n_iter=STEPS, n_restarts=1, eps=EPS, norm="Linf", seed=seed,
                                           device="cpu", logger=aa.logger, n_target_classes=TARGETS)
    with torch.random.fork_rng(devices=[]), frozen_params(model):  # the shared model's weights get no .grad
        return aa.run_standard_evaluation(x, y, batch_size=len(x))


def test_adapter_matches_pyautoattack(fmnist_cnn, batch):
    x, y = batch
    atk = AutoAttack(fmnist_cnn, eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], steps=STEPS, restarts=1,
                     targets=TARGETS)
    x_adv = atk(x, y, seed=7)
    verify_in_ball(x_adv, x, EPS, "linf", atk.label)
    ref_x, ref_pred = _direct(fmnist_cnn, x, y, seed=7)
    with torch.no_grad():
        robust = fmnist_cnn(x_adv).argmax(1) == y
    assert torch.equal(robust, ref_pred == y)
    assert torch.equal(x_adv, ref_x)
    with torch.no_grad():
        clean = fmnist_cnn(x).argmax(1) == y
    assert int(clean.sum()) > int(robust.sum())  # the attack broke something: the comparison is not vacuous


def test_adapter_keeps_the_callers_rng(fmnist_cnn, batch):
    x, y = batch
    atk = AutoAttack(fmnist_cnn, eps=EPS, version="custom", attacks=["apgd-ce"], steps=2, restarts=1)
    torch.manual_seed(123)
    atk(x, y, seed=0)
    after = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(4))


def test_settings_record_the_effective_package_values(fmnist_cnn):
    atk = AutoAttack(fmnist_cnn, eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], steps=STEPS, targets=3)
    eff = atk.settings()["effective"]
    assert eff["attacks"] == ["apgd-ce", "apgd-t"]
    assert eff["apgd"]["n_iter"] == STEPS and eff["apgd-t"]["n_iter"] == STEPS and eff["apgd-t"]["n_target_classes"] == 3
    built = atk.build("cpu", 0).apgd
    fresh = APGDAttack(fmnist_cnn, n_iter=STEPS, eps=EPS)  # the step-size schedule follows n_iter
    assert (built.n_iter_2, built.n_iter_min, built.size_decr) == (fresh.n_iter_2, fresh.n_iter_min, fresh.size_decr)
    std = AutoAttack(fmnist_cnn, eps=8 / 255).settings()["effective"]
    assert std["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and std["square"]["n_queries"] == 5000


class _SoftmaxNet(torch.nn.Module):
    """A model that outputs probabilities: pyautoattack's check must flag it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


def test_check_warnings_become_flags_and_go_through_our_logger(fmnist_cnn, batch, caplog):
    x, y = batch
    atk = AutoAttack(_SoftmaxNet(fmnist_cnn).eval(), eps=EPS, version="custom", attacks=["apgd-ce"], steps=2, restarts=1)
    with caplog.at_level(logging.DEBUG, logger="rfbench.attacks.autoattack"):
        atk(x, y, seed=0)
        atk(x, y, seed=1)
    assert "softmax-output" in atk.flags and atk.flags["softmax-output"]["count"] == 2
    ours = [r for r in caplog.records if r.name == "rfbench.attacks.autoattack" and "probability distribution" in r.getMessage()]
    assert [r.levelno for r in ours] == [logging.WARNING, logging.DEBUG]  # said once, counted twice
    assert not logging.getLogger("auto-attack").handlers  # the routing is undone


@pytest.mark.parametrize("kwargs,fragment", [
    ({"version": "custom"}, "needs attacks="),
    ({"version": "standard", "attacks": ["apgd-ce"]}, "only allowed with version=custom"),
    ({"version": "custom", "attacks": ["apgd-x"]}, "unknown attack"),
    ({"version": "rand"}, "must be one of"),
])
def test_config_errors(fmnist_cnn, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        AutoAttack(fmnist_cnn, eps=EPS, **kwargs)


@pytest.mark.parametrize("training", [False, True])
def test_adapter_leaves_the_models_mode_as_it_found_it(fmnist_cnn, batch, training):
    x, y = batch
    atk = AutoAttack(fmnist_cnn, eps=EPS, version="custom", attacks=["apgd-ce"], steps=1, restarts=1)
    fmnist_cnn.train(training)
    try:
        atk(x[:4], y[:4], seed=0)
        assert [m.training for m in fmnist_cnn.modules()] == [training] * len(list(fmnist_cnn.modules()))
        assert all(p.grad is None and p.requires_grad for p in fmnist_cnn.parameters())
    finally:
        fmnist_cnn.eval()


def test_adapter_runs_on_a_channels_last_model_and_hands_pyautoattack_contiguous_gradients():
    """pyautoattack flattens gradients with ``.view``; a channels-last ResNet-18 returns non-contiguous ones."""
    from rfbench.attacks.autoattack import _DefaultLayoutGrad
    from rfbench.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=3, width=0.125).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    for net, contiguous in ((model, False), (_DefaultLayoutGrad(model), True)):
        xi = x.contiguous().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(xi).sum(), xi)
        assert grad.is_contiguous() == contiguous  # the raw model's gradient would break grad.view(n, -1)
    atk = AutoAttack(model, eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], steps=2, restarts=1, targets=2)
    x_adv = atk(x, y, seed=1)
    verify_in_ball(x_adv, x, EPS, "linf", atk.label)
    assert x_adv.shape == x.shape
