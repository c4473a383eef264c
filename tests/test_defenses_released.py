"""``fidelity: released``: every defense against an independent re-derivation of its released algorithm.

Each reference below is written from the release's maths (start, clipping, batch-norm
mode, loss of the inner maximisation, schedules, statistics), not from rfbench's code:
explicit loops over steps, the release's sum reductions, BN modes set by hand.  Both
sides use the same CNN3 (with batch norm, fitted on real Fashion-MNIST images), the
same images and the same seeded random draw.  Where a release differs from the paper,
the test also shows that ``fidelity: paper`` (today's arithmetic) differs from the
release, so the test would fail on code without the released mode.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rfbench.attacks.core import pgd
from rfbench.benchmark.data import iterate_batches
from rfbench.core.threat import Threat
from rfbench.defenses import build_defense
from rfbench.defenses.base import EpochStats, TrainContext
from rfbench.defenses.cb_at import effective_number
from rfbench.models import create_model

EPS, ALPHA, STEPS = 0.1, 0.025, 5
LT_COUNTS = [6000, 3764, 2362, 1482, 930, 584, 366, 230, 144, 120]  # Fashion-MNIST-LT ρ = 50 shape
TOL = 1e-6  # float64 on both sides


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def batch(fmnist):
    """30 real Fashion-MNIST training images, 3 per class, float64."""
    y = fmnist.train.y
    pos = torch.cat([torch.nonzero(y == c).flatten()[:3] for c in range(10)])
    x, yb, _ = next(iterate_batches(fmnist.train.subset(pos), 30))
    return x.double(), yb


@pytest.fixture(scope="module")
def cnn(fmnist, batch):
    """CNN3 (batch norm) after 15 Adam steps of clean training on the batch, float64, eval mode."""
    x, y = batch
    torch.manual_seed(0)
    model = create_model("cnn3", 10, 1, fmnist.mean, fmnist.std).double()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(15):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def build(name: str, args: dict[str, Any], ctx: TrainContext) -> Any:
    """The registered defense (typed loosely: the tests read method-specific attributes)."""
    return build_defense(name, args, ctx)


def fresh(model):
    """A copy of the model (its own BN buffers), in eval mode."""
    return copy.deepcopy(model).eval()


def ctx_for(fidelity, counts=(100,) * 10, seed=7, epochs=3, val_loader=None):
    return TrainContext(num_classes=len(counts), train_counts=list(counts),
                        threat=Threat("linf", eps=EPS, alpha=ALPHA, steps=STEPS), epochs=epochs,
                        generator=torch.Generator().manual_seed(seed), fidelity=fidelity, val_loader=val_loader)


def run_perturb(name, fidelity, model, x, y, args=None, counts=(100,) * 10, seed=7, epoch=None,
                setup=None) -> tuple[torch.Tensor, Any]:
    d = build(name, args or {}, ctx_for(fidelity, counts, seed))
    if epoch is not None:
        d.on_epoch_start(epoch)
    if setup is not None:
        setup(d)
    return d.perturb(model, x, y), d


def bn_buffers(model):
    return [b.clone() for n, b in model.named_buffers() if "running" in n]


# --------------------------------------------------------------------------- the released inner maximisations
def release_attack(model, x, y, loss_fn, *, start, bn, clip_start, seed=7, eps: float | torch.Tensor = EPS,
                   alpha: float | torch.Tensor = ALPHA, steps=STEPS, start_radius=None):
    """A release's PGD loop, written out: draw the start, (maybe) clip it, then ``steps`` sign steps
    on ``loss_fn(logits)`` (summed over the batch), each followed by the eps-ball and [0,1] clips.

    ``bn``: ``eval`` (model.eval()), ``train`` (model.train(): batch statistics, running statistics
    updated by every forward) or ``batch`` (batch statistics without touching running statistics,
    computed here on a copy whose BN layers have no running buffers at all).
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.empty_like(x)
    if start == "normal":
        x_adv = x + 0.001 * noise.normal_(generator=g)
    elif start == "one-sided":
        x_adv = x + float(eps) * noise.uniform_(0, 1, generator=g)
    else:
        r = float(eps) if start_radius is None else float(start_radius)  # a scalar radius: uniform_(-r, r)
        x_adv = x + noise.uniform_(-r, r, generator=g)
    if clip_start:
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    net = model
    if bn == "batch":
        net = copy.deepcopy(model)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean, m.running_var = None, None
        net.train()
    else:
        model.train(bn == "train")
    e = eps.view(-1, 1, 1, 1) if isinstance(eps, torch.Tensor) else eps
    a = alpha.view(-1, 1, 1, 1) if isinstance(alpha, torch.Tensor) else alpha
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = loss_fn(net(x_adv))
        grad, = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + a * torch.sign(grad)
        x_adv = torch.min(torch.max(x_adv, x - e), x + e)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.eval()
    return x_adv.detach()


def kl_loss(model, x):
    """TRADES' attack loss: KLDivLoss(size_average=False)(log p(x'), p(x)) with p(x) in eval mode."""
    model.eval()
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    return lambda logits: torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(logits, dim=1), p_nat)


def ce_sum(y):
    return lambda logits: F.cross_entropy(logits, y, reduction="sum")


def assert_same(ours, theirs):
    assert ours.dtype == theirs.dtype == torch.float64
    assert (ours - theirs).abs().max().item() < TOL


def assert_differs(ours, theirs):
    assert (ours - theirs).abs().max().item() > 1e-3


# --------------------------------------------------------------------------- E1: the TRADES-family starts
@pytest.mark.parametrize("name", ["trades", "awp-trades", "wat", "dafa", "frl-rw", "frl-rwrm"])
def test_trades_family_starts_unclipped(name, cnn, batch):
    """E1 (TRADES trades.py, TRADES-AWP, WAT, DAFA, FRL): x + 0.001·N(0,1), first gradient before any clip."""
    x, y = batch
    # FRL-RWRM's per-class radius is a per-sample tensor, held in float32 like the images it perturbs
    eps = torch.tensor(EPS, dtype=torch.float32).double() if name == "frl-rwrm" else EPS
    ref = release_attack(cnn, x, y, kl_loss(cnn, x), start="normal", bn="eval", clip_start=False, eps=eps)
    ours, _ = run_perturb(name, "released", cnn, x, y)
    assert_same(ours, ref)
    paper, _ = run_perturb(name, "paper", cnn, x, y)
    assert_differs(paper, ref)
    clipped = release_attack(cnn, x, y, kl_loss(cnn, x), start="normal", bn="eval", clip_start=True, eps=eps)
    assert_same(paper, clipped)  # paper = today's arithmetic: the clipped start


@pytest.mark.parametrize("name", ["mart", "at-bsl", "taet"])
def test_ce_attacks_with_normal_start_unclipped(name, cnn, batch):
    """E1 (MART mart.py, AT-BSL at_bsl_loss.py, TAET HARL.py): CE-PGD from the unclipped x + 0.001·N(0,1)."""
    x, y = batch
    ref = release_attack(cnn, x, y, ce_sum(y), start="normal", bn="eval", clip_start=False)
    ours, _ = run_perturb(name, "released", cnn, x, y, counts=LT_COUNTS)
    assert_same(ours, ref)
    paper, _ = run_perturb(name, "paper", cnn, x, y, counts=LT_COUNTS)
    assert_differs(paper, ref)


def test_reat_uniform_start_unclipped(cnn, batch):
    """E1 (REAT loss_functions.py): x + U(−ε, ε) unclipped; the RBL-weighted CE (weight=w, mean over Σw)."""
    x, y = batch
    n, a = LT_COUNTS, LT_COUNTS  # epoch 0: a_i = n_i
    e = torch.tensor([effective_number(ai, (ni - 1) / ni) for ni, ai in zip(n, a)], dtype=torch.float64)
    w = 1.0 / (e + 1e-5)
    w = w / w.sum() * 10
    ref = release_attack(cnn, x, y, lambda z: F.cross_entropy(z, y, weight=w.to(z)), start="uniform", bn="eval",
                         clip_start=False)
    ours, _ = run_perturb("reat", "released", cnn, x, y, counts=LT_COUNTS)
    assert_same(ours, ref)
    paper, _ = run_perturb("reat", "paper", cnn, x, y, counts=LT_COUNTS)
    assert_differs(paper, ref)


# --------------------------------------------------------------------------- E2: AT-AWP and CFA attack in train mode
def test_awp_at_attacks_in_train_mode_and_gamma(cnn, batch):
    """E2 and E4: AT-AWP's attack_pgd after model.train() (uniform start, clipped), γ = 0.01 in its AT scripts."""
    x, y = batch
    theirs = fresh(cnn)
    ref = release_attack(theirs, x, y, ce_sum(y), start="uniform", bn="train", clip_start=True)
    ours_model = fresh(cnn)
    ours, d = run_perturb("awp-at", "released", ours_model, x, y)
    assert_same(ours, ref)
    for b, c in zip(bn_buffers(ours_model), bn_buffers(theirs)):  # STEPS attack forwards absorbed, as released
        assert torch.allclose(b, c, atol=1e-12)
    assert any(not torch.equal(b, c) for b, c in zip(bn_buffers(ours_model), bn_buffers(cnn)))
    assert d.weight_perturbation().gamma == 0.01  # the AWP hook's settings
    paper_model = fresh(cnn)
    paper, p = run_perturb("awp-at", "paper", paper_model, x, y)
    assert_differs(paper, ref)
    assert p.weight_perturbation().gamma == 5e-3
    assert all(torch.equal(b, c) for b, c in zip(bn_buffers(paper_model), bn_buffers(cnn)))  # eval mode
    for fid in ("paper", "released"):  # TRADES-AWP's script: 5e-3 and 9 of 200 warm-up epochs either way
        t = build("awp-trades", {}, ctx_for(fid)).weight_perturbation()
        assert (t.gamma, t.warmup) == (5e-3, 0.045)
    assert build("awp-at", {"awp_gamma": 0.02}, ctx_for("released")).weight_perturbation().gamma == 0.02


def test_cfa_pgd_at_attacks_in_train_mode_from_clamped_uniform_start(cnn, batch):
    """E2 (CFA attack.py's attack_pgd / cw_attack_pgd, run in train.py's model.train()): batch statistics, every
    attack forward updating the running statistics; the uniform start clamped to [0,1] before the first gradient."""
    x, y = batch
    theirs = fresh(cnn)
    ref = release_attack(theirs, x, y, ce_sum(y), start="uniform", bn="train", clip_start=True)
    ours_model = fresh(cnn)
    ours, _ = run_perturb("cfa", "released", ours_model, x, y, args={"base": "pgd-at"})
    assert_same(ours, ref)
    for b, c in zip(bn_buffers(ours_model), bn_buffers(theirs)):  # STEPS attack forwards absorbed
        assert torch.allclose(b, c, atol=1e-12)
    assert any(not torch.equal(b, c) for b, c in zip(bn_buffers(ours_model), bn_buffers(cnn)))
    paper, _ = run_perturb("cfa", "paper", fresh(cnn), x, y, args={"base": "pgd-at"})
    assert_differs(paper, ref)  # the same start, but BN in eval mode


def test_cfa_trades_attacks_in_eval_mode_from_unclipped_start(cnn, batch):
    """E1 (CFA attack.py's trades_loss / cw_trades_loss call model.eval() first): running statistics, untouched;
    the first gradient at the unclipped x + 0.001·N(0,1)."""
    x, y = batch
    ref = release_attack(cnn, x, y, kl_loss(cnn, x), start="normal", bn="eval", clip_start=False)
    ours_model = fresh(cnn)
    ours, _ = run_perturb("cfa", "released", ours_model, x, y, args={"base": "trades"})
    assert_same(ours, ref)
    assert all(torch.equal(b, c) for b, c in zip(bn_buffers(ours_model), bn_buffers(cnn)))
    paper, _ = run_perturb("cfa", "paper", fresh(cnn), x, y, args={"base": "trades"})
    assert_differs(paper, ref)


# --------------------------------------------------------------------------- E3: RobustLT
def test_robustlt_batch_statistics_and_base_eps_start(cnn, batch):
    """E3 (core/methods/utils.py, AdversarialTraining.get_adversarial_examples): train() with
    track_running_stats=False (batch statistics, running statistics untouched) and a start x + U(−ε, ε) in the
    base-ε ball, clamped to [0,1] before the first gradient; the steps project onto the class-wise ball."""
    x, y = batch
    epoch, epochs, a, b = 2, 3, 0.3, 0.8
    n_max, total = max(LT_COUNTS), sum(LT_COUNTS)
    s = [math.sqrt(math.log(n_max / n)) for n in LT_COUNTS]
    tau = a / sum(n / total * si for n, si in zip(LT_COUNTS, s))
    ramp = min(epoch / (b * epochs), 1.0)
    class_eps = torch.tensor([((1 - a) * EPS + tau * si * EPS) * ramp for si in s], dtype=torch.float64)
    eps_y = class_eps.float().double()[y]  # per-sample radius (rfbench keeps it in float32, as the images)
    alpha_y = (class_eps.float()[y] / EPS * ALPHA).double()
    model = fresh(cnn)
    before = bn_buffers(model)
    ref = release_attack(model, x, y, ce_sum(y), start="uniform", bn="batch", clip_start=True, eps=eps_y,
                         alpha=alpha_y, start_radius=EPS)
    ours, d = run_perturb("robustlt", "released", model, x, y, counts=LT_COUNTS, epoch=epoch)
    assert_same(ours, ref)
    unclipped = release_attack(model, x, y, ce_sum(y), start="uniform", bn="batch", clip_start=False, eps=eps_y,
                               alpha=alpha_y, start_radius=EPS)
    assert_differs(ours, unclipped)  # the clamp of the start matters on these images
    assert all(torch.equal(p, q) for p, q in zip(before, bn_buffers(model)))  # running statistics untouched
    assert d.classwise_eps() == pytest.approx(class_eps.tolist(), rel=1e-12)
    paper, _ = run_perturb("robustlt", "paper", model, x, y, counts=LT_COUNTS, epoch=epoch)
    assert_differs(paper, ref)
    # the per-class ε sequence of a 10-epoch replay, the same in both modes
    for fid in ("paper", "released"):
        r = build("robustlt", {}, TrainContext(num_classes=10, train_counts=LT_COUNTS, threat=Threat(eps=EPS),
                                                       epochs=10, fidelity=fid))
        for e in range(10):
            r.on_epoch_start(e)
            k = min(e / (b * 10), 1.0)
            assert r.classwise_eps() == pytest.approx([((1 - a) * EPS + tau * si * EPS) * k for si in s], rel=1e-12)


# --------------------------------------------------------------------------- methods whose release matches rfbench's attack
def test_cfol_attack_and_exp3_replay(cnn, batch):
    """CFOL: CE-PGD (uniform start, clipped, eval mode) and its Exp3 replay equal in both modes."""
    x, y = batch
    ref = release_attack(cnn, x, y, ce_sum(y), start="uniform", bn="eval", clip_start=True)
    for fid in ("paper", "released"):
        ours, d = run_perturb("cfol", fid, cnn, x, y)
        assert_same(ours, ref)
        w = [0.0] * 10
        gen = torch.Generator().manual_seed(3)
        for _ in range(6):  # six batches of random labels and random wrong/right outcomes
            yb = torch.randint(0, 10, (16,), generator=gen)
            logits = torch.randn(16, 10, generator=gen, dtype=torch.float64)
            ew = [math.exp(v) for v in w]
            p = [0.5 / 10 + 0.5 * v / sum(ew) for v in ew]
            d.q = d.distribution()
            d.on_batch_end(yb, logits)
            for yi, li in zip(yb.tolist(), logits):
                if int(li.argmax()) != yi:
                    w[yi] += 5e-6 / p[yi]
        assert d.w.tolist() == pytest.approx(w, rel=1e-12, abs=1e-18)


def test_robal_attack_on_scale_one_cosines(cnn, batch):
    """RoBal: CE-PGD on the cosine head's scale-1 logits (eval mode); the release's one-sided start
    x + ε·U[0,1) under ``released``, the symmetric ball under ``paper``."""
    x, y = batch
    xs = {}
    for fid in ("paper", "released"):
        d = build("robal", {}, ctx_for(fid, LT_COUNTS))
        torch.manual_seed(1)
        model = d.setup_model(fresh(cnn)).double().eval()
        head = model.head

        def cos_logits(feats, head=head):
            w = head.weight
            return F.normalize(feats, dim=1) @ (w / (w.norm(dim=1, keepdim=True) + 1 / 32)).t()
        net = _FeatureHead(model, cos_logits)
        start = "one-sided" if fid == "released" else "uniform"
        ref = release_attack(net, x, y, ce_sum(y), start=start, bn="eval", clip_start=fid != "released")
        xs[fid] = ours = d.perturb(model, x, y)
        assert_same(ours, ref)
    assert_differs(xs["paper"], xs["released"])


class _FeatureHead(torch.nn.Module):
    """The model's features through a hand-written cosine head."""

    def __init__(self, model, head):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x):
        _, f = self.model(x, return_features=True)
        return self.head(f)


# --------------------------------------------------------------------------- E5, E6: FRL's schedules and step
def _frl_release_replay(gammas, rwrm, epochs):
    """FRL's release: for 1-based epoch t, `if t % 40 == 0: rate1 /= 2` before the update; rate2 never halves."""
    rate1_clean, rate1_bndy, rate2 = 0.05, 0.1, 0.2
    lam0 = [0.0] * 10
    lam1 = [0.0] * 10
    lam2 = [0.0] * 10
    out = []
    for t in range(1, epochs + 1):
        if t % 40 == 0:
            rate1_clean, rate1_bndy = rate1_clean / 2, rate1_bndy / 2
        g0, g1 = gammas[t - 1]
        lam0 = [max(v + rate1_clean * g, 0.0) for v, g in zip(lam0, g0)]
        if sum(lam0) > 0.5:
            lam0 = [v / sum(lam0) * 0.5 for v in lam0]
        lam1 = [max(v + rate1_bndy * g, 0.0) for v, g in zip(lam1, g1)]
        if sum(lam1) > 0.5:
            lam1 = [v / sum(lam1) * 0.5 for v in lam1]
        if rwrm:
            lam2 = [v + rate2 * g for v, g in zip(lam2, g1)]
        out.append((list(lam0), list(lam1), list(lam2)))
    return out


def test_frl_rate_schedule_replay():
    """E5: a 45-epoch replay over the same statistics equals the release's λ sequence; paper differs from 39 on."""
    epochs, tau = 45, 0.07
    gen = torch.Generator().manual_seed(5)
    accs = [(0.5 + 0.4 * torch.rand(10, generator=gen, dtype=torch.float64),) for _ in range(epochs)]
    accs = [(c, c - 0.3 * torch.rand(10, generator=gen, dtype=torch.float64)) for (c,) in accs]
    gammas = []
    for clean, rob in accs:
        ce, be = 1 - clean, clean - rob
        gammas.append(((ce - ce.mean() - tau).tolist(), (be - be.mean() - tau).tolist()))
    ref = _frl_release_replay(gammas, True, epochs)
    seqs = {}
    for fid in ("released", "paper"):
        d = build("frl-rwrm", {"initial_update": False}, ctx_for(fid))
        seq = []
        for e, (clean, rob) in enumerate(accs):  # the update before 0-based epoch e
            d.update(clean, rob, epoch=e)
            seq.append((d.lam0.tolist(), d.lam1.tolist(), d.lam2.tolist()))
        seqs[fid] = seq
    for ours, theirs in zip(seqs["released"], ref):
        for a, b in zip(ours, theirs):
            assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
    first_diff = next(e for e, (a, b) in enumerate(zip(seqs["paper"], ref))
                      if any(p != pytest.approx(q, rel=1e-12, abs=1e-15) for p, q in zip(a, b)))
    assert first_diff == 39  # the release halves before 1-based epoch 40


def test_frl_rwrm_step_is_batch_max_over_four(cnn, batch):
    """E6: the step is max(ε over the batch's samples)/4; paper: max over all classes."""
    d = build("frl-rwrm", {}, ctx_for("released"))
    p = build("frl-rwrm", {}, ctx_for("paper"))
    lam2 = torch.linspace(-0.2, 0.3, 10, dtype=torch.float64)
    d.lam2, p.lam2 = lam2.clone(), lam2.clone()
    y = torch.tensor([0, 1, 2, 3, 2, 1])  # without the largest-margin class (9)
    class_eps = [EPS * min(max(math.exp(2 * v), 0.98), 3.0) for v in lam2.tolist()]
    eps_r, alpha_r = d.sample_eps(y)
    assert isinstance(eps_r, torch.Tensor)
    _, alpha_p = p.sample_eps(y)
    assert alpha_r == pytest.approx(max(class_eps[i] for i in y.tolist()) / 4, rel=1e-12)
    assert alpha_p == pytest.approx(max(class_eps) / 4, rel=1e-12)
    assert alpha_r < alpha_p
    assert eps_r.tolist() == pytest.approx([class_eps[i] for i in y.tolist()], rel=1e-6)


def test_frl_boundary_error_counts_every_adversarially_correct_sample(cnn, batch):
    """The release's b_i = clean acc − (correct under attack, whatever the clean prediction)."""
    x, y = batch
    from rfbench.attacks.measure import clean_and_pgd_accuracy
    loader = [(x, y, None)]
    kw: dict[str, Any] = dict(num_classes=10, eps=0.3, alpha=0.1, steps=3, generator=None)
    torch.manual_seed(0)
    _, adv = clean_and_pgd_accuracy(cnn, loader, require_clean=False, **kw)
    torch.manual_seed(0)
    clean, rob = clean_and_pgd_accuracy(cnn, loader, **kw)
    torch.manual_seed(0)
    x_adv = pgd(cnn, x, y, eps=0.3, alpha=0.1, steps=3, bn="eval")
    with torch.no_grad():
        adv_ok = (cnn(x_adv).argmax(1) == y).double()
        clean_ok = (cnn(x).argmax(1) == y).double()
    for c in range(10):
        m = y == c
        assert adv[c].item() == pytest.approx(adv_ok[m].mean().item())
        assert rob[c].item() == pytest.approx((adv_ok * clean_ok)[m].mean().item())
    assert (adv >= rob).all()


# --------------------------------------------------------------------------- E7: CFA's defaults and FAWA gate
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))


def test_cfa_released_defaults_and_fawa_start():
    """E7: no FAWA start epoch (from the first epoch whose worst class reaches 0.24), decay 0.88, CCM/CCR from
    epoch 10, λ1 0.5 for TRADES too; the average replayed over 8 epochs."""
    worst = [0.1, 0.15, 0.25, 0.2, 0.3, 0.26, 0.31, 0.24]  # the worst-class accuracy of 8 epochs of 20
    runs = {}
    for fid in ("released", "paper"):
        ctx = ctx_for(fid, epochs=20)
        d = build("cfa", {"base": "trades"}, ctx)
        model = _Tiny()
        ctx.averages.attach(model)
        accepted = []
        for e, wc in enumerate(worst):
            with torch.no_grad():
                model.w.fill_(float(e + 1))
            out = d.on_epoch_end(EpochStats(epoch=e, train_pred_counts=[10] * 10, train_robust_acc=[0.5] * 10,
                                            train_adv_probs=[[0.1] * 10] * 10, val_clean_acc=[0.9] * 10,
                                            val_robust_acc=[wc] + [0.6] * 9, model=None))
            accepted.append(out["fawa_accepted"])
        runs[fid] = (d, accepted, next(ctx.averages.modules()["fawa"].parameters())[0].item())
    # the release's FAWA, written out: the first accepted checkpoint initialises, later ones enter with 0.88
    avg = None
    for e, wc in enumerate(worst):
        if wc >= 0.24:
            avg = float(e + 1) if avg is None else 0.88 * avg + 0.12 * float(e + 1)
    d, accepted, fawa = runs["released"]
    assert accepted == [wc >= 0.24 for wc in worst]
    assert fawa == pytest.approx(avg, rel=1e-6)
    assert (d.fawa_threshold, d.fawa_decay, d.adaptive_start, d.ccm_lambda) == (0.24, 0.88, 10, 0.5)
    p, accepted_p, fawa_p = runs["paper"]
    assert (p.fawa_threshold, p.fawa_decay, p.adaptive_start, p.ccm_lambda) == (0.2, 0.85, 0, 0.3)
    assert accepted_p == [wc >= 0.2 and e >= round(0.25 * 20) for e, wc in enumerate(worst)]
    assert fawa_p != pytest.approx(avg, rel=1e-3)
    assert build("cfa", {"released_defaults": False}, ctx_for("released")).fawa_threshold == 0.2


def test_cfa_released_gate_counts_adversarially_correct_samples(cnn, batch):
    """E7: under ``released`` the gate measures PGD-10 accuracy on the validation split, clean prediction ignored."""
    x, y = batch
    ctx = ctx_for("released", val_loader=lambda bs=512: iter([(x, y, None)]))
    d = build("cfa", {}, ctx)
    stats = EpochStats(epoch=0, train_pred_counts=[], train_robust_acc=[], train_adv_probs=[], val_clean_acc=[],
                       val_robust_acc=[0.0] * 10, model=cnn)
    got = d._fawa_val_acc(stats)
    x_adv = release_attack(cnn, x, y, ce_sum(y), start="uniform", bn="eval", clip_start=True, steps=10)
    with torch.no_grad():
        ok = (cnn(x_adv).argmax(1) == y).double()
    assert got.tolist() == pytest.approx([ok[y == c].mean().item() for c in range(10)])


class _Replayed(torch.nn.Module):
    """A parameter and a floating buffer, set by hand each epoch (FAWA averages both)."""

    stat: torch.Tensor

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
        self.register_buffer("stat", torch.zeros(3, dtype=torch.float64))


def _cfa_replay_statistics(epochs):
    """A seeded sequence of per-class statistics: validation robust accuracies whose worst class climbs to a
    plateau around 0.24 with noise (so the gate also rejects epochs after its first acceptance), training
    robust accuracies, and the weights and buffer after each epoch."""
    gen = torch.Generator().manual_seed(13)
    val, train, weights = [], [], []
    for e in range(epochs):
        level = 0.05 + 0.22 * min(e / 40, 1.0)
        val.append((level + 0.25 * torch.rand(10, generator=gen, dtype=torch.float64)
                    - 0.06 * torch.rand(1, generator=gen, dtype=torch.float64)).clamp(0, 1).tolist())
        train.append((0.1 + 0.5 * torch.rand(10, generator=gen, dtype=torch.float64)).tolist())
        weights.append((torch.randn(4, generator=gen, dtype=torch.float64),
                        torch.rand(3, generator=gen, dtype=torch.float64)))
    return val, train, weights


def test_cfa_released_fawa_and_class_schedules_replay():
    """E7 over 200 epochs of the same statistics: the release's FAWA (train.py with utils.py's weight_average:
    the weights of the first epoch whose worst class reaches 0.24 initialise the average, every later accepted
    epoch enters as 0.88·avg + 0.12·θ on parameters and buffers, a rejected epoch leaves it unchanged) and its
    per-class ε and β (from epoch 10, (0.5 + t_k) with t the previous epoch's training robust accuracy; CCR's
    β_k/(1+β_k) = (0.5 + t_k)β / (1 + (0.5 + t_k)β)), compared at every epoch; ``paper`` differs at epoch 55."""
    epochs, eps, beta = 200, EPS, 6.0
    val, train, weights = _cfa_replay_statistics(epochs)
    # the release, written out
    ref_avg, ref_eps, ref_beta, first = [], [], [], None
    avg = None
    for e in range(epochs):
        if e >= 10:
            t = torch.tensor(train[e - 1], dtype=torch.float64)
            ref_eps.append((0.5 + t) * eps)
            ref_beta.append((0.5 + t) * beta / (1 + (0.5 + t) * beta))
        else:
            ref_eps.append(torch.full((10,), eps, dtype=torch.float64))
            ref_beta.append(torch.full((10,), beta / (1 + beta), dtype=torch.float64))
        if min(val[e]) >= 0.24:
            if avg is None:
                first, avg = e, [v.clone() for v in weights[e]]
            else:
                avg = [0.88 * a + 0.12 * v for a, v in zip(avg, weights[e])]
        ref_avg.append(avg)
    assert first is not None and 20 < first < 55  # the gate fires before the checkpoint checked below
    assert sum(min(v) < 0.24 for v in val[first:]) > 5  # and rejects some epochs after it
    fawa_at = {}
    for fid in ("released", "paper"):
        ctx = ctx_for(fid, epochs=epochs)
        d = build("cfa", {"base": "trades"}, ctx)
        model = _Replayed()
        ctx.averages.attach(model)
        fawa = ctx.averages.modules()["fawa"]
        for e in range(epochs):
            d.on_epoch_start(e)
            class_eps, _ = d.sample_eps(torch.arange(10))
            b = d.class_beta()
            if fid == "released":
                assert torch.as_tensor(class_eps, dtype=torch.float64).expand(10).tolist() == pytest.approx(
                    ref_eps[e].tolist(), rel=1e-6)  # the per-sample radius is float32, as the images
                assert (b / (1 + b)).tolist() == pytest.approx(ref_beta[e].tolist(), rel=1e-12)
            with torch.no_grad():
                model.w.copy_(weights[e][0])
                model.stat.copy_(weights[e][1])
            d.on_epoch_end(EpochStats(epoch=e, train_pred_counts=[10] * 10, train_robust_acc=train[e],
                                      train_adv_probs=[[0.1] * 10] * 10, val_clean_acc=[0.9] * 10,
                                      val_robust_acc=val[e], model=None))
            got = [fawa.state_dict()[k].clone() for k in ("w", "stat")]
            if fid == "released":
                # before the first acceptance rfbench's copy mirrors the raw weights (the release's holds a fresh network)
                expected = weights[e] if ref_avg[e] is None else ref_avg[e]
                for g, r in zip(got, expected):
                    assert g.tolist() == pytest.approx(r.tolist(), rel=1e-12, abs=1e-15)
            if e == 55:
                fawa_at[fid] = got
    gap = max((p - r).abs().max().item() for p, r in zip(fawa_at["paper"], fawa_at["released"]))
    assert gap > 1e-2


# --------------------------------------------------------------------------- E8: WAT's validation cost
def test_wat_validation_cost_and_hedge_replay(cnn, batch):
    """E8 (worst_class_adversarial_train.py's validate): C times each class's summed validation cost over
    (batches × 128); Hedge weights replayed over 2 epochs."""
    x, y = batch
    val = (x, y)

    def loader(bs=256):
        return iter([(val[0], val[1], None)])
    beta, eta = 6.0, 0.1
    results = {}
    for fid in ("released", "paper"):
        ctx = ctx_for(fid, seed=11, val_loader=loader)
        d = build("wat", {}, ctx)
        logs = [d.on_epoch_end(EpochStats(epoch=e, train_pred_counts=[], train_robust_acc=[], train_adv_probs=[],
                                          val_clean_acc=[], val_robust_acc=[], model=cnn)) for e in range(2)]
        results[fid] = (d, logs)
    # the reference: the release's TRADES attack on the validation images with the same random stream
    cum = torch.zeros(11, dtype=torch.float64)
    for e in range(2):
        _, logs = results["released"]
        gen = torch.Generator().manual_seed(11)  # the context's stream: one start drawn per validation epoch
        for _ in range(e):
            torch.empty_like(x).normal_(generator=gen)
        x_adv = _release_trades_from(cnn, x, gen)
        with torch.no_grad():
            z, za = cnn(x), cnn(x_adv)
            ce = F.cross_entropy(z, y, reduction="none")
            kl = (F.softmax(z, 1) * (F.log_softmax(z, 1) - F.log_softmax(za, 1))).sum(1)
            per = ce + beta * kl
        cost = 10 * torch.zeros(10, dtype=torch.float64).index_add(0, y, per) / (math.ceil(len(y) / 128) * 128)
        assert logs[e]["wat_val_class_loss"] == pytest.approx(cost.tolist(), rel=1e-5)  # float32 loss terms
        cum = cum + torch.cat([cost, cost.mean().view(1)])
        assert logs[e]["wat_weights"] == pytest.approx((10 * torch.softmax(eta * cum, 0)).tolist(), rel=1e-6)
    _, paper_logs = results["paper"]
    assert paper_logs[0]["wat_val_class_loss"] != pytest.approx(results["released"][1][0]["wat_val_class_loss"], rel=1e-3)


class _LookupLogits(torch.nn.Module):
    """Validation image i is filled with i/(n−1); its logits are row i of ``table`` (set per epoch).

    The logits do not depend on the pixels differentiably, so the TRADES attack's gradient is zero and its
    point looks up the same row: each image's TRADES loss is its CE, and the costs are the table's."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.table = torch.zeros(n, 10, dtype=torch.float64)

    def forward(self, x):
        flat = x.flatten(1)
        idx = torch.round(flat.mean(1) * (self.n - 1)).long()
        return self.table[idx] + 0.0 * flat.sum(1, keepdim=True)


def test_wat_hedge_weights_replay_over_epochs():
    """E8 over 8 epochs of the same validation costs (a seeded sequence, unequal class counts): the release's
    validate and Hedge update (worst_class_adversarial_train.py), written out: per class the summed cost, entry C
    the summed cost of every image over C, all times C over (batches × 128); Σ over epochs; w = C·exp(η·Σc)/Σexp.
    Every epoch's weights equal; ``paper`` (per-class means) differs."""
    counts = [20 + 2 * k for k in range(10)]
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    n, epochs, eta, beta = len(y), 8, 0.1, 6.0
    x = (torch.arange(n, dtype=torch.float64) / (n - 1)).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    gen = torch.Generator().manual_seed(17)
    hardness = torch.linspace(0.0, 2.0, 10, dtype=torch.float64)  # the later classes are harder
    tables = []
    for _ in range(epochs):
        t = 2.0 * torch.randn(n, 10, generator=gen, dtype=torch.float64)
        t[torch.arange(n), y] += 2.0 - hardness[y]
        tables.append(t)
    # the release, written out
    batches = math.ceil(n / 128)
    cum = torch.zeros(11, dtype=torch.float64)
    ref = []
    for t in tables:
        per = F.cross_entropy(t, y, reduction="none")  # + β·KL, zero: the attack's point has the same logits
        summed = torch.zeros(11, dtype=torch.float64)
        for k in range(10):
            summed[k] = per[y == k].sum()
        summed[10] = per.sum() / 10
        cum = cum + summed / (batches * 128) * 10
        factor = (cum * eta).exp()
        ref.append(10 * factor / factor.sum())
    model = _LookupLogits(n)
    weights = {}
    for fid in ("released", "paper"):
        d = build("wat", {}, ctx_for(fid, seed=3, val_loader=lambda bs=256: iter([(x, y, None)])))
        seq = []
        for e, t in enumerate(tables):
            model.table = t
            out = d.on_epoch_end(EpochStats(epoch=e, train_pred_counts=[], train_robust_acc=[], train_adv_probs=[],
                                            val_clean_acc=[], val_robust_acc=[], model=model))
            seq.append(out["wat_weights"])
        weights[fid] = (d, seq)
    d, seq = weights["released"]
    for ours, theirs in zip(seq, ref):
        assert ours == pytest.approx(theirs.tolist(), rel=1e-6)  # rfbench's CE term is float32 (trades_terms)
    assert max(abs(a - b) for a, b in zip(weights["paper"][1][-1], ref[-1].tolist())) > 1e-2
    # the training loss with these weights (train): Σ_k w_k·Σ_{i∈k} ℓ_i / B, plus w_C times the mean TRADES loss
    zx, za = 2.0 * torch.randn(30, 10, generator=gen, dtype=torch.float64), torch.randn(30, 10, generator=gen,
                                                                                        dtype=torch.float64)
    yb = torch.arange(30) % 10
    ce = F.cross_entropy(zx, yb, reduction="none")
    kl = torch.nn.KLDivLoss(reduction="none")(F.log_softmax(za, 1), F.softmax(zx, 1)).sum(1)
    w = ref[-1]
    nat = sum(ce[yb == k].sum() * w[k] for k in range(10))
    bndy = sum(kl[yb == k].sum() * w[k] for k in range(10))
    trades = F.cross_entropy(zx, yb) + beta * torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(za, 1),
                                                                                   F.softmax(zx, 1)) / 30
    release_loss = (nat + beta * bndy) / 30 + trades * w[10]
    pair = _PairLogits(zx, za)
    got = d.loss(pair, pair.x, yb, pair.x_adv).loss
    assert got.item() == pytest.approx(release_loss.item(), rel=1e-6)


class _PairLogits(torch.nn.Module):
    """Returns the given clean logits for the input ``x`` and the given adversarial logits for ``x_adv``."""

    def __init__(self, clean, adv):
        super().__init__()
        self.clean, self.adv = clean, adv
        self.x, self.x_adv = torch.zeros(len(clean), 1), torch.ones(len(clean), 1)

    def forward(self, x):
        return self.adv if bool(x[0, 0] > 0.5) else self.clean


def _release_trades_from(model, x, gen):
    model.eval()
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    x_adv = x + 0.001 * torch.empty_like(x).normal_(generator=gen)
    for _ in range(STEPS):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(model(x_adv), dim=1), p_nat)
        grad, = torch.autograd.grad(loss, [x_adv])
        x_adv = torch.min(torch.max(x_adv.detach() + ALPHA * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    return x_adv.detach()


# --------------------------------------------------------------------------- the switch itself
def test_fidelity_is_a_train_config_field_and_reaches_the_defense():
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.core.config import from_dict, to_dict
    from rfbench.core.errors import ConfigError
    assert TrainConfig().fidelity == "paper"
    assert to_dict(TrainConfig(fidelity="released"))["fidelity"] == "released"
    with pytest.raises(ConfigError):
        from_dict(TrainConfig, {"fidelity": "as-released"}, where="config")
    assert build("trades", {}, ctx_for("released")).attack_fidelity(torch.zeros(1))["start_clip"] is False
    assert build("trades", {}, ctx_for("paper")).attack_fidelity(torch.zeros(1)) == {"bn": "eval",
                                                                                              "start_clip": True}


# --------------------------------------------------------------------------- the PGD core's options
def test_core_bn_modes_restore_the_model_and_touch_running_statistics_as_named(cnn, batch):
    x, y = batch
    kw: dict[str, Any] = dict(eps=EPS, alpha=ALPHA, steps=2, generator=torch.Generator().manual_seed(1))
    outs = {}
    for mode in ("eval", "train", "batch"):
        model = fresh(cnn)
        before = bn_buffers(model)
        kw["generator"] = torch.Generator().manual_seed(1)
        outs[mode] = pgd(model, x, y, bn=mode, **kw)
        assert not model.training  # the caller's mode comes back
        assert all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        changed = any(not torch.equal(p, q) for p, q in zip(before, bn_buffers(model)))
        assert changed == (mode == "train")
    assert_same(outs["train"], outs["batch"])  # the same batch statistics; only the bookkeeping differs
    assert_differs(outs["eval"], outs["batch"])
    with pytest.raises(ValueError):
        pgd(cnn, x, y, bn="frozen", **kw)


def test_core_start_clip_and_start_radius(cnn, batch):
    x, y = batch
    g = torch.Generator().manual_seed(2)
    start = pgd(cnn, x, y, eps=EPS, alpha=ALPHA, steps=0, start="uniform", start_eps=0.02, start_clip=False, generator=g)
    noise = torch.empty_like(x).uniform_(-0.02, 0.02, generator=torch.Generator().manual_seed(2))
    assert_same(start, x + noise)  # unclipped: some pixels of the black background lie below 0
    assert start.min() < 0
    clipped = pgd(cnn, x, y, eps=EPS, alpha=ALPHA, steps=0, start="uniform", start_eps=0.02,
                  generator=torch.Generator().manual_seed(2))
    assert_same(clipped, (x + noise).clamp(0, 1))
