"""Every registered defense takes one real training step (timm-style registry test).

Parametrised over :func:`rfbench.defenses.list_defenses`, so a newly registered
defense is tested without anyone writing a test for it.  For each one: build
it from plain construction (no special setup), install its head
(``setup_model``), take one training step on 32 real Fashion-MNIST-LT images
with a SmallCNN and 2-step PGD, back-propagate, and check:

* the loss is a finite scalar, the adversarial logits (if any) are finite;
* every trainable parameter gets a finite gradient that is not all zero.
  Individual zero entries are allowed (dead ReLU units and max-pool give
  exactly zero gradients to some rows), but SmallCNN has no normalisation
  layer, so no parameter tensor is structurally cut off from the loss: an
  all-zero tensor gradient means the defense's loss ignores that parameter;
* the trainer's other hooks run: ``on_epoch_start``, ``sample_order``,
  ``on_batch_end``, ``on_epoch_end`` with plausible statistics, and
  ``inference_model`` gives finite logits of the right shape;
* ``state_dict`` / ``load_state_dict`` round-trip into a freshly built defense.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rfbench.benchmark.data import iterate_batches, load_dataset
from rfbench.defenses import EpochStats, Threat, TrainContext, build_defense, get_defense_class, list_defenses
from rfbench.models import create_model

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 4  # 4 images of every class: 40, of which the first 32 make the batch (tail classes included)


@pytest.fixture(scope="session")
def fmnist_lt():
    """Fashion-MNIST-LT (ρ=50) loaded once: real long-tailed training counts and real images."""
    return load_dataset("fashion-mnist", imbalance_ratio=50)


@pytest.fixture(scope="session")
def batch(fmnist_lt):
    """32 real training images, stratified so that every class -- the REAT tail classes 7-9 too -- appears."""
    y = fmnist_lt.train.y
    pos = torch.cat([torch.nonzero(y == c).flatten()[:PER_CLASS] for c in range(fmnist_lt.num_classes)])
    ds = fmnist_lt.train.subset(pos[torch.randperm(len(pos), generator=torch.Generator().manual_seed(0))[:32]])
    x, yb, p = next(iterate_batches(ds, 32))
    return x, yb, p


def make_ctx(bundle, generator_seed: int = 0) -> TrainContext:
    val = bundle.val.subset(torch.arange(0, len(bundle.val), max(1, len(bundle.val) // 40)))
    return TrainContext(
        num_classes=bundle.num_classes,
        train_counts=bundle.train_counts,
        threat=Threat(norm="linf", eps=bundle.threat.eps, alpha=bundle.threat.train_alpha, steps=2),
        epochs=3,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(generator_seed),
        val_loader=lambda batch_size: iterate_batches(val, batch_size),
        lr_milestones=[2],
    )


def make_model(bundle, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("smallcnn", bundle.num_classes, bundle.in_channels, bundle.mean, bundle.std)


def plausible_stats(epoch: int, counts: list[int], model) -> EpochStats:
    """Per-class statistics of the shape and range the trainer produces (long-tailed predictions)."""
    c = len(counts)
    pred = [int(n * 0.9) for n in counts]
    pred[0] += sum(counts) - sum(pred)  # the head absorbs the errors; the total stays N
    probs = [[0.6 if i == j else 0.4 / (c - 1) for j in range(c)] for i in range(c)]
    return EpochStats(
        epoch=epoch,
        train_pred_counts=pred,
        train_robust_acc=[0.6 - 0.05 * i for i in range(c)],
        train_adv_probs=probs,
        val_clean_acc=[0.9 - 0.04 * i for i in range(c)],
        val_robust_acc=[0.5 - 0.04 * i for i in range(c)],
        model=model,
    )


def take_step(name_or_spec: str, bundle, x, y, pos):
    """Build, set up the model, one training step, backward; returns (defense, model, out)."""
    ctx = make_ctx(bundle)
    defense = build_defense(name_or_spec, {}, ctx)
    model = defense.setup_model(make_model(bundle))
    defense.on_epoch_start(0)
    order = defense.sample_order(0, bundle.train.y, torch.Generator().manual_seed(1))
    if order is not None:
        assert order.dtype == torch.long and order.ndim == 1
        assert int(order.min()) >= 0 and int(order.max()) < len(bundle.train)
    model.zero_grad(set_to_none=True)
    out = defense.training_step(model, x, y, pos)
    out.loss.backward()
    return defense, model, out


def assert_gradients(model):
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: all-zero gradient (the loss ignores this parameter)"


@pytest.mark.parametrize("name", list_defenses())
def test_one_training_step(name, fmnist_lt, batch):
    x, y, pos = batch
    defense, model, out = take_step(name, fmnist_lt, x, y, pos)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss), f"loss {out.loss}"
    if out.adv_logits is not None:
        assert out.adv_logits.shape == (len(y), fmnist_lt.num_classes)
        assert torch.isfinite(out.adv_logits).all()
    for k, v in out.terms.items():
        assert torch.isfinite(torch.as_tensor(v)).all(), f"term {k} = {v}"
    assert_gradients(model)
    # the hooks after the step, in the trainer's order
    defense.on_batch_end(y, out.adv_logits)
    logged = defense.on_epoch_end(plausible_stats(0, fmnist_lt.train_counts, model))
    assert isinstance(logged, dict)
    model.eval()
    with torch.no_grad():
        logits = defense.inference_model(model)(x)
    assert logits.shape == (len(y), fmnist_lt.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_defenses())
def test_state_dict_round_trip(name, fmnist_lt, batch):
    x, y, pos = batch
    defense, model, out = take_step(name, fmnist_lt, x, y, pos)
    defense.on_batch_end(y, out.adv_logits)
    defense.on_epoch_end(plausible_stats(0, fmnist_lt.train_counts, model))
    defense.on_epoch_start(1)
    state = defense.state_dict()
    fresh = build_defense(name, {}, make_ctx(fmnist_lt))
    fresh.load_state_dict(state)
    again = fresh.state_dict()
    assert set(again) == set(state)
    for k in state:
        a, b = state[k], again[k]
        if torch.is_tensor(a):
            assert torch.equal(a, b), k
        else:
            assert a == b, k


def test_unknown_defense_lists_names():
    from rfbench.core.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="reat"):
        get_defense_class("no-such-defense")


def test_example_defense_loads_from_file_spec(fmnist_lt, batch, monkeypatch):
    """``--defense examples/my_defense.py:WorstClassAT`` (docs/defenses.md) loads, trains and updates its state."""
    monkeypatch.chdir(REPO)
    spec = "examples/my_defense.py:WorstClassAT"
    from rfbench.core.plugins import allow_code

    monkeypatch.setattr("rfbench.core.plugins._ALLOWED", set())
    allow_code([spec])  # what naming it with --defense on the command line does
    cls = get_defense_class(spec)
    assert cls.__name__ == "WorstClassAT"
    assert "worst-class-at" not in list_defenses()  # loading a file does not register it
    x, y, pos = batch
    defense, model, out = take_step(spec, fmnist_lt, x, y, pos)
    assert torch.isfinite(out.loss)
    assert_gradients(model)
    assert torch.equal(defense.class_weights, torch.ones(10))
    stats = plausible_stats(0, fmnist_lt.train_counts, model)  # class 9 has the lowest robust accuracy
    assert defense.on_epoch_end(stats) == {"boosted_class": 9}
    fresh = build_defense(spec, {"boost": 3.0}, make_ctx(fmnist_lt))
    fresh.load_state_dict(defense.state_dict())
    assert fresh.class_weights.tolist() == [1.0] * 9 + [2.0]
    assert fresh.cfg.boost == 3.0


# --------------------------------------------------------------------------- reproduction configs
CONFIG_FILES = sorted((REPO / "configs" / "cifar10-lt50").glob("*.yaml")) + sorted((REPO / "configs" / "fmnist-lt50").glob("*.yaml"))
SPEC_RECIPES = {  # docs/fairness-defenses.md recipes (PGD-AT takes AT-BSL's recipe, whose baseline it is)
    "pgd-at": dict(model="resnet18", epochs=100, batch_size=128, lr=0.1, weight_decay=5e-4, milestones=[75, 90], steps=10),
    "at-bsl": dict(model="resnet18", epochs=100, batch_size=128, lr=0.1, weight_decay=5e-4, milestones=[75, 90], steps=10),
    "reat": dict(model="resnet18", epochs=80, batch_size=128, lr=0.1, weight_decay=5e-4, milestones=[60, 75], steps=10),
    "reat-per-pair": dict(model="resnet18", epochs=80, batch_size=128, lr=0.1, weight_decay=5e-4, milestones=[60, 75], steps=10),
    "robal-n": dict(model="wrn34_10", epochs=80, batch_size=64, lr=0.1, weight_decay=2e-4, milestones=[60, 75], steps=5),
    "robal-r": dict(model="wrn34_10", epochs=80, batch_size=64, lr=0.1, weight_decay=2e-4, milestones=[60, 75], steps=5),
}


def _load_config(path):
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.core.config import from_dict, load_yaml

    return from_dict(TrainConfig, load_yaml(path), where=str(path))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_is_valid(path):
    from rfbench.core.config import from_dict
    from rfbench.models import list_models

    cfg = _load_config(path)
    assert cfg.model in list_models()
    from_dict(get_defense_class(cfg.defense).Config, cfg.defense_args, where=f"{path} defense_args")
    assert cfg.out.endswith(path.stem)


def test_cifar10_lt50_configs_follow_the_spec():
    got = {p.stem: _load_config(p) for p in CONFIG_FILES if p.parent.name == "cifar10-lt50"}
    assert set(got) == set(SPEC_RECIPES)
    for name, recipe in SPEC_RECIPES.items():
        cfg = got[name]
        assert (cfg.dataset, cfg.imbalance_ratio, cfg.eps, cfg.alpha) == ("cifar10-lt", 50, 8 / 255, 2 / 255), name
        assert (cfg.momentum, cfg.gamma, cfg.schedule) == (0.9, 0.1, "multistep"), name
        for key, value in recipe.items():
            assert getattr(cfg, key) == value, (name, key)
    assert got["robal-n"].defense_args["variant"] == "N" and got["robal-r"].defense_args["variant"] == "R"
    assert got["reat"].defense_args["variant"] == "released" and got["reat-per-pair"].defense_args["variant"] == "per-pair"


def test_fmnist_lt50_runs_share_model_budget_and_seed():
    import dataclasses

    cfgs = {p.stem: dataclasses.asdict(_load_config(p)) for p in CONFIG_FILES if p.parent.name == "fmnist-lt50"}
    assert set(cfgs) == {"pgd-at", "cb-at", "at-bsl", "reat-released", "reat-per-pair"}
    strip = lambda c: {k: v for k, v in c.items() if k not in ("defense", "defense_args", "out")}  # noqa: E731
    base = strip(cfgs["pgd-at"])
    assert base["dataset"] == "fashion-mnist" and base["imbalance_ratio"] == 50
    for name, c in cfgs.items():
        assert strip(c) == base, name
