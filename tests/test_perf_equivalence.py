"""Every speed-up gives the answer of the plain path (within a stated tolerance), on real Fashion-MNIST.

* input-only gradients: parameters are frozen while the attack runs;
* per-sample early stop: the same robust/not answer as running every step
  and asking whether *any* iterate fooled the model, with fewer forward rows;
* bf16 autocast: PGD robust accuracy within 2 points of fp32's;
* channels-last: logits and input gradients equal to float tolerance, the
  same PGD answers;
* TRADES' clean prediction computed once: bit-identical to recomputing it at
  every attack step (the official code's way), with half the forwards;
* the trainer's ``amp``/``channels_last``/``compile`` switches.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rfbench.attacks import build_attack
from rfbench.attacks.core import eval_mode, pgd
from rfbench.attacks.losses import make_loss
from rfbench.benchmark.data import iterate_batches
from rfbench.benchmark.data.subsets import per_class_subset
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.runtime import measure_channels_last, use_channels_last
from rfbench.benchmark.train.trainer import Trainer
from rfbench.benchmark.train.validate import validation_accuracy
from rfbench.core.threat import Threat, ThreatDefaults, resolve_threat
from rfbench.defenses import TrainContext, build_defense
from rfbench.defenses.trades_terms import trades_perturb

EPS, ALPHA, STEPS = 0.05, 0.0125, 10  # half the protocol radius: the fixture model is then partly robust
BF16_TOLERANCE = 0.02  # |robust acc bf16 - fp32| on 500 images (10 images); observed: 0.002 (1 image)


@pytest.fixture(scope="module")
def test_points(fmnist):
    """500 real test images, 50 per class."""
    x, y, _ = next(iterate_batches(per_class_subset(fmnist.test, 50, seed=2), 500))
    return x, y


class ForwardCounter:
    """Counts the forward passes of a model and the rows they carried."""

    def __init__(self, model):
        self.calls = self.rows = 0
        self.frozen = []
        self.handle = model.register_forward_pre_hook(self._hook)
        self.model = model

    def _hook(self, module, args):
        self.calls += 1
        self.rows += len(args[0])
        self.frozen.append(not any(p.requires_grad for p in self.model.parameters()))

    def close(self):
        self.handle.remove()


def _robust(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def test_attack_freezes_parameters_and_computes_input_gradients_only(fmnist_cnn, test_points):
    x, y = test_points
    counter = ForwardCounter(fmnist_cnn)
    try:
        pgd(fmnist_cnn, x[:64], y[:64], eps=EPS, alpha=ALPHA, steps=3, generator=torch.Generator().manual_seed(0))
    finally:
        counter.close()
    assert counter.calls == 3 and all(counter.frozen)  # every attack forward ran with frozen parameters
    assert all(p.requires_grad and p.grad is None for p in fmnist_cnn.parameters())


def test_early_stop_gives_the_answer_of_every_iterate_with_less_work(fmnist_cnn, test_points):
    x, y = test_points[0][:200], test_points[1][:200]
    steps = 6
    gen = lambda: torch.Generator().manual_seed(4)
    counter = ForwardCounter(fmnist_cnn)
    try:
        x_es = pgd(fmnist_cnn, x, y, eps=EPS, alpha=ALPHA, steps=steps, early_stop=True, generator=gen())
    finally:
        counter.close()
    es_robust = _robust(fmnist_cnn, x_es, y)
    # plain path: every iterate k = 0..steps of the same seeded trajectory; robust = no iterate fools the model
    plain_robust = torch.ones_like(es_robust)
    for k in range(steps + 1):
        plain_robust &= _robust(fmnist_cnn, pgd(fmnist_cnn, x, y, eps=EPS, alpha=ALPHA, steps=k, generator=gen()), y)
    assert torch.equal(es_robust, plain_robust)
    assert 0.1 < float(plain_robust.float().mean()) < 0.9  # a partly robust model: the check is not vacuous
    assert counter.rows < 0.8 * steps * len(x)  # fooled samples left the batch


def test_trainer_validation_early_stop_matches_the_plain_per_class_answer(fmnist, fmnist_cnn):
    val = per_class_subset(fmnist.test, 20, seed=5)
    _, robust = validation_accuracy(fmnist_cnn, val, eps=EPS, alpha=ALPHA, steps=4,
                                   generator=torch.Generator().manual_seed(1))
    x, y, _ = next(iterate_batches(val, len(val)))
    with torch.no_grad():
        alive = fmnist_cnn(x).argmax(1) == y  # robust = clean-correct and correct at every PGD iterate
    for k in range(5):
        alive &= _robust(fmnist_cnn, pgd(fmnist_cnn, x, y, eps=EPS, alpha=ALPHA, steps=k,
                                         generator=torch.Generator().manual_seed(1)), y)
    per_class = (torch.bincount(y[alive], minlength=10).double() / torch.bincount(y, minlength=10)).tolist()
    assert robust == pytest.approx(per_class, abs=1e-12)


def test_evaluation_attacks_use_early_stop_by_default():
    threat = resolve_threat(ThreatDefaults(norm="linf", eps=0.1, eval_steps=20, eval_alpha=0.025), "eval")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    for spec in ("pgd", "cw", "temperature-pgd:T=0.5", "pgd:steps=50,restarts=5"):
        assert build_attack(spec, model, threat).cfg.early_stop, spec  # what the harness builds from its specs


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_attack_robust_accuracy_is_within_tolerance_of_fp32(fmnist_cnn, test_points, channels_last):
    x, y = test_points
    model = fmnist_cnn
    if channels_last:
        model = type(fmnist_cnn)(10, 1, width=0.25)
        model.load_state_dict(fmnist_cnn.state_dict())
        model = model.eval().to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    kw: dict[str, Any] = dict(eps=EPS, alpha=ALPHA, steps=STEPS)
    fp32 = pgd(fmnist_cnn, x, y, generator=torch.Generator().manual_seed(7), **kw)
    bf16 = pgd(model, x, y, generator=torch.Generator().manual_seed(7), autocast_dtype=torch.bfloat16, **kw)
    assert bf16.dtype == torch.float32 and (bf16 - x).abs().max() <= EPS + 1e-6
    acc32 = float(_robust(fmnist_cnn, fp32, y).float().mean())
    acc16 = float(_robust(fmnist_cnn, bf16, y).float().mean())
    assert 0.1 < acc32 < 0.9
    assert abs(acc16 - acc32) <= BF16_TOLERANCE
    assert not torch.equal(fp32, bf16)  # bf16 really ran


def test_channels_last_matches_contiguous_to_float_tolerance(fmnist_cnn, test_points):
    x, y = test_points
    cl = type(fmnist_cnn)(10, 1, width=0.25)
    cl.load_state_dict(fmnist_cnn.state_dict())
    cl = cl.eval().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    grads = []
    for m, xx in ((fmnist_cnn, x), (cl, x_cl)):
        xx = xx.clone().requires_grad_(True)
        logits = m(xx)
        grads.append((logits.detach(), torch.autograd.grad(F.cross_entropy(logits, y), [xx])[0]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    # input gradients: max-pool windows with tied maxima (flat background) may route a gradient to the
    # other, equal, input in the other layout; observed relative difference 5e-4
    g0, g1 = grads[0][1], grads[1][1]
    assert float((g1 - g0).norm() / g0.norm()) < 5e-3
    kw: dict[str, Any] = dict(eps=EPS, alpha=ALPHA, steps=STEPS)
    a = pgd(fmnist_cnn, x, y, generator=torch.Generator().manual_seed(3), **kw)
    b = pgd(cl, x_cl, y, generator=torch.Generator().manual_seed(3), **kw)
    assert b.is_contiguous(memory_format=torch.channels_last)  # the core keeps the caller's layout
    assert float((a == b).float().mean()) > 0.99  # a sign can flip only where the gradient is ~0
    assert torch.equal(_robust(fmnist_cnn, a, y), _robust(fmnist_cnn, b, y))


def _naive_trades_attack(model, x, eps, alpha, steps, generator):
    """TRADES' inner maximisation as the official code runs it: the clean prediction recomputed every step."""
    loss_fn = make_loss("kl")
    with eval_mode(model):
        x_adv = (x + 0.001 * torch.empty_like(x).normal_(generator=generator)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            clean = F.softmax(model(x).float(), dim=1)  # recomputed at every step
            loss = loss_fn(model(x_adv).float(), None, {"clean_probs": clean}).mean()
            grad, = torch.autograd.grad(loss, [x_adv])
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0, 1).detach()
    return x_adv


def _official_formula_attack(model, x, eps, alpha, steps, generator):
    """The same with the official loss expression (KLDivLoss summed), for a tolerance check.

    The start is clipped to [0,1] as the PGD core does (the official code clips from the first step on).
    """
    kl = torch.nn.KLDivLoss(reduction="sum")
    with eval_mode(model):
        x_adv = (x + 0.001 * torch.empty_like(x).normal_(generator=generator)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
            grad, = torch.autograd.grad(loss, [x_adv])
            x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


@pytest.mark.parametrize("entry", ["defense", "trades_terms"])
def test_trades_clean_prediction_once_is_identical_to_recomputing_it(fmnist_cnn, test_points, entry):
    x, y = test_points[0][:128], test_points[1][:128]
    naive = _naive_trades_attack(fmnist_cnn, x, EPS, ALPHA, STEPS, torch.Generator().manual_seed(8))
    counter = ForwardCounter(fmnist_cnn)
    try:
        if entry == "defense":
            ctx = TrainContext(num_classes=10, train_counts=[1] * 10, epochs=1,
                               threat=Threat(eps=EPS, alpha=ALPHA, steps=STEPS),
                               generator=torch.Generator().manual_seed(8))
            fast = build_defense("trades", {}, ctx).perturb(fmnist_cnn, x, y)
        else:
            fast = trades_perturb(fmnist_cnn, x, y, eps=EPS, alpha=ALPHA, steps=STEPS,
                                  generator=torch.Generator().manual_seed(8))
    finally:
        counter.close()
    assert torch.equal(fast, naive)
    assert counter.calls == STEPS + 1  # one clean forward, then one per step (the naive loop runs 2 per step)
    official = _official_formula_attack(fmnist_cnn, x, EPS, ALPHA, STEPS, torch.Generator().manual_seed(8))
    assert float((official == fast).float().mean()) > 0.99  # other loss expression: only rounding differs


def test_channels_last_auto_follows_the_measurements():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last("auto", cpu, torch.bfloat16) and use_channels_last("auto", cpu, None) is None
    assert use_channels_last("auto", cuda) and use_channels_last("on", cpu) and not use_channels_last("off", cuda)


class _Slow(torch.nn.Module):
    """Sleeps longer in one layout, so the probe has a known right answer."""

    def __init__(self, slow_layout):
        super().__init__()
        self.conv, self.slow, self.calls = torch.nn.Conv2d(3, 2, 3), slow_layout, 0

    def forward(self, x):
        import time
        self.calls += 1
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        time.sleep(0.02 if cl == (self.slow == "channels_last") else 0.0)
        return self.conv(x).flatten(1)


@pytest.mark.parametrize("slow", ["channels_last", "default"])
def test_channels_last_probe_picks_the_measured_faster_layout_and_leaves_the_model_as_it_was(slow):
    model = _Slow(slow).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choice, ms = measure_channels_last(model, (128, 3, 8, 8), torch.device("cpu"), rounds=3)
    assert choice == (slow == "default")
    assert (ms["channels_last_ms"] > ms["default_ms"]) == (slow == "channels_last")
    assert model.calls == 8 and model.training  # 1 warm-up + 3 rounds per layout; mode restored
    assert model.conv.weight.is_contiguous() and model.conv.weight.grad is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_layout_is_measured_once_per_machine_and_model(tmp_path, monkeypatch):
    from rfbench.benchmark.train import runtime

    monkeypatch.setenv("RFBENCH_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(runtime, "measure_channels_last",
                        lambda m, shape, dev: (calls.append(shape) or True, {"default_ms": 2.0, "channels_last_ms": 1.0}))
    cpu, small, wide = torch.device("cpu"), torch.nn.Conv2d(3, 2, 3), torch.nn.Conv2d(3, 4, 3)
    assert runtime.cached_channels_last(small, (8, 3, 5, 5), cpu) == (True, {"default_ms": 2.0, "channels_last_ms": 1.0}, False)
    assert runtime.cached_channels_last(small, (8, 3, 5, 5), cpu)[2]  # the second run reads the cache
    runtime.cached_channels_last(wide, (8, 3, 5, 5), cpu)  # another architecture, and another input shape,
    runtime.cached_channels_last(small, (16, 3, 5, 5), cpu)  # are measured anew
    assert len(calls) == 3 and (tmp_path / "cache" / "layouts.json").is_file()


def test_trainer_follows_the_measured_layout_and_a_resumed_run_keeps_it(tmp_path, monkeypatch):
    from rfbench.benchmark.train import trainer as trainer_mod

    calls = []
    monkeypatch.setattr(trainer_mod, "cached_channels_last",
                        lambda *a: (calls.append(1) or True, {"default_ms": 2.0, "channels_last_ms": 1.0}, False))
    cfg = TrainConfig(**TINY, out=str(tmp_path / "r"), amp="off")
    first = Trainer(cfg, quiet=True)
    assert first.channels_last and len(calls) == 1
    assert next(p for p in first.module.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    first._save_last()
    monkeypatch.setattr(trainer_mod, "cached_channels_last",
                        lambda *a: (False, {"default_ms": 1.0, "channels_last_ms": 2.0}, False))
    assert Trainer(cfg, quiet=True).channels_last  # from checkpoint-last.pt, whatever the machine says now
    assert not Trainer(cfg, quiet=True, force=True).channels_last  # --force starts over and asks again


TINY: dict[str, Any] = dict(dataset="fashion-mnist", model="smallcnn", model_kwargs={"width": 0.5}, max_train_samples=256,
            val_per_class=10, steps=2, val_steps=2, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=0.0,
            device="cpu", seed=3, epochs=1)


def test_bf16_channels_last_training_tracks_fp32(tmp_path):
    params = lambda t: torch.cat([p.detach().flatten().clone() for p in t.module.parameters()])
    stats, start, end = {}, {}, {}
    for name, kw in (("fp32", {"amp": "off"}), ("bf16", {"amp": "bf16"})):
        trainer = Trainer(TrainConfig(**TINY, out=str(tmp_path / name), **kw), quiet=True)
        if name == "bf16":
            assert trainer.channels_last  # auto: on with bf16 autocast on CPU
            assert next(trainer.module.parameters()).dtype == torch.float32  # master weights stay fp32
        start[name] = params(trainer)
        stats[name] = trainer._train_epoch(0)
        end[name] = params(trainer)
    assert torch.equal(start["bf16"], start["fp32"])
    assert stats["bf16"]["loss"] == pytest.approx(stats["fp32"]["loss"], rel=1e-3)  # observed 1e-6
    # four SGD steps: the bf16 weights land within 25% of the fp32 update from the fp32 weights (observed 10%)
    moved = (end["fp32"] - start["fp32"]).norm()
    assert (end["bf16"] - end["fp32"]).norm() < 0.25 * moved and moved > 0


def test_compile_switch_compiles_the_training_model_only(tmp_path):
    trainer = Trainer(TrainConfig(**TINY, out=str(tmp_path / "c"), compile=True), quiet=True)
    assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.model._orig_mod is trainer.module  # same parameters; checkpoints use the eager module
    assert not any(k.startswith("_orig_mod") for k in trainer._state()["model"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_model_attack_matches_eager(fmnist_cnn, test_points):
    x, y = test_points[0][:64], test_points[1][:64]
    compiled = torch.compile(fmnist_cnn)
    kw: dict[str, Any] = dict(eps=EPS, alpha=ALPHA, steps=3)
    a = pgd(fmnist_cnn, x, y, generator=torch.Generator().manual_seed(6), **kw)
    b = pgd(compiled, x, y, generator=torch.Generator().manual_seed(6), **kw)
    assert float((a == b).float().mean()) > 0.99
    assert torch.equal(_robust(fmnist_cnn, a, y), _robust(fmnist_cnn, b, y))


def test_layout_message_says_what_was_measured_and_what_was_chosen():
    from rfbench.benchmark.train.runtime import layout_message

    said = layout_message(True, {"default_ms": 15.3, "channels_last_ms": 11.0}, cached=False)
    assert "15.3 ms in the default layout and 11.0 ms in channels-last" in said and said.endswith("using channels-last")
    nan = float("nan")
    assert "ran out of memory" in layout_message(False, {"default_ms": nan, "channels_last_ms": nan}, cached=False)
