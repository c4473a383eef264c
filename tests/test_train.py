"""The trainer: end-to-end on real Fashion-MNIST, exact resume, lr schedules, NaN policy, selection."""

import json
import os

import pytest
import torch

from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.rundir import load_run_model
from rfbench.benchmark.train.schedule import lr_at
from rfbench.benchmark.train.statistics import selection_score
from rfbench.benchmark.train.trainer import NonFiniteLossError, Trainer, train
from rfbench.core.errors import ConfigError
from rfbench.core.io import load_checkpoint

TINY = dict(dataset="fashion-mnist", model="smallcnn", max_train_samples=320, val_per_class=10, steps=2,
            val_steps=2, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=0.0, device="cpu", seed=3)


def _cfg(tmp_path, name, **kw):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2-epoch run that the resume tests compare against."""
    return train(_cfg(tmp_path_factory.mktemp("straight"), "run", epochs=2), quiet=True)


def _assert_same_run(a_dir, b_dir):
    a = load_checkpoint(a_dir / "checkpoint-last.pt")
    b = load_checkpoint(b_dir / "checkpoint-last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(a["history"]) == strip(b["history"])


def test_train_writes_a_complete_run_directory(tmp_path):
    out = train(_cfg(tmp_path, "run", epochs=2, defense="pgd-at"), quiet=True)
    for f in ("config.yaml", "checkpoint-last.pt", "checkpoint-best.pt", "log.jsonl", "summary.json"):
        assert (out / f).is_file(), f
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    threads = int(os.environ["RFBENCH_THREADS"])  # set by conftest; applied to every CPU run
    assert [r["cpu_threads"] for r in lines] == [threads, threads]
    assert json.loads((out / "summary.json").read_text())["cpu_threads"] == [threads]
    assert len(lines[0]["val_robust_acc"]) == 10 and len(lines[0]["train_robust_acc"]) == 10
    best = load_checkpoint(out / "checkpoint-best.pt")
    assert best["epoch"] == max(lines, key=lambda r: r["select_score"])["epoch"]
    model, info = load_run_model(out, "last")
    assert not model.training and info["epoch"] == 2
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)


def test_resume_after_a_kill_is_bit_identical(tmp_path, straight):
    # "killed" after epoch 1: train 1 epoch, then rerun the 2-epoch config in the same directory
    train(_cfg(tmp_path, "resumed", epochs=1), quiet=True)
    _assert_same_run(straight, train(_cfg(tmp_path, "resumed", epochs=2), quiet=True))


def test_finished_run_is_not_redone_and_other_config_is_refused(tmp_path):
    cfg = _cfg(tmp_path, "run", epochs=1)
    train(cfg, quiet=True)
    stamp = (tmp_path / "run" / "checkpoint-last.pt").stat().st_mtime_ns
    train(cfg, quiet=True)
    assert (tmp_path / "run" / "checkpoint-last.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different config"):
        train(_cfg(tmp_path, "run", epochs=1, lr=0.5), quiet=True)


def test_nan_loss_stops_with_epoch_and_batch_or_skips(tmp_path, monkeypatch):
    from rfbench.defenses.standard import PGDAT

    real = PGDAT.training_step

    def poisoned(self, model, x, y, pos=None):
        out = real(self, model, x, y, pos)
        if self.epoch == 0 and getattr(self, "_calls", 0) == 1:
            out.loss = out.loss * float("nan")
        self._calls = getattr(self, "_calls", 0) + 1
        return out

    monkeypatch.setattr(PGDAT, "training_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 1, batch 2"):
        train(_cfg(tmp_path, "nan", epochs=1), quiet=True)
    out = train(_cfg(tmp_path, "skip", epochs=1, nan_policy="skip-batch"), quiet=True)
    rec = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert rec["skipped_batches"] == 1


def test_lr_schedules():
    assert [lr_at(e, 0.1, "multistep", 100, [75, 90], 0.1) for e in (0, 74, 75, 89, 90)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001])
    assert lr_at(0, 0.1, "cosine", 10, [], 0.1) == pytest.approx(0.1)
    assert lr_at(5, 0.1, "cosine", 10, [], 0.1) == pytest.approx(0.05)
    assert lr_at(7, 0.1, "constant", 10, [75], 0.1) == 0.1


def test_selection_rules():
    rob = [0.5, 0.1, 0.3]
    assert selection_score(rob, "mean") == pytest.approx(0.3)
    assert selection_score(rob, "worst") == pytest.approx(0.1)
    assert selection_score(rob, "mean+worst") == pytest.approx(0.4)


def test_per_class_training_statistics_reach_the_defense(tmp_path, monkeypatch):
    seen = []
    from rfbench.defenses.standard import PGDAT

    monkeypatch.setattr(PGDAT, "on_epoch_end", lambda self, stats: seen.append(stats) or {})
    t = Trainer(_cfg(tmp_path, "stats", epochs=1))
    t.fit()
    s = seen[0]
    assert sum(s.train_pred_counts) == len(t.bundle.train)
    assert len(s.train_adv_probs) == 10 and all(abs(sum(row) - 1) < 1e-4 for row in s.train_adv_probs)
    assert all(0 <= a <= 1 for a in s.val_clean_acc + s.val_robust_acc + s.train_robust_acc)


@pytest.mark.parametrize("at_batch", [2, 4])
def test_sigterm_mid_epoch_saves_state_and_resume_is_bit_identical(tmp_path, monkeypatch, at_batch, straight):
    import signal

    from rfbench.core.errors import Interrupted
    from rfbench.defenses.standard import PGDAT

    trainer = Trainer(_cfg(tmp_path, "killed", epochs=2))
    calls = {"n": 0}

    def on_batch_end(self, y, adv_logits):
        calls["n"] += 1
        if calls["n"] == at_batch:  # as if SIGTERM arrived during this batch
            trainer._signal = signal.SIGTERM

    monkeypatch.setattr(PGDAT, "on_batch_end", on_batch_end)
    with pytest.raises(Interrupted, match=f"SIGTERM at epoch 1, batch {at_batch}.*same command") as exc:
        trainer.fit()
    assert exc.value.exit_code == 128 + signal.SIGTERM
    assert load_checkpoint(tmp_path / "killed" / "checkpoint-last.pt")["partial"]["batches_done"] == at_batch
    monkeypatch.undo()
    _assert_same_run(straight, train(_cfg(tmp_path, "killed", epochs=2), quiet=True))


def test_selection_score_leaves_out_a_class_without_validation_images():
    nan = float("nan")
    assert selection_score([nan, 0.2, 0.4], "worst") == pytest.approx(0.2)
    assert selection_score([nan, 0.2, 0.4], "mean") == pytest.approx(0.3)
    assert selection_score([nan, 0.2, 0.4], "mean+worst") == pytest.approx(0.5)


def test_validation_robust_requires_clean_correct():
    """A model wrong on clean inputs and right on every perturbed one is robust nowhere."""
    from rfbench.benchmark.data.base import ArrayDataset
    from rfbench.benchmark.train.validate import validation_accuracy

    class Flip(torch.nn.Module):  # class 1 on the clean (all-black) images, class 0 once any pixel moved
        def forward(self, x):
            moved = (x.flatten(1) > 0).float().sum(1, keepdim=True)  # no gradient: PGD keeps its random start
            return torch.cat([moved, 0.5 - moved, -moved - 1], 1) + 0 * x.flatten(1).sum(1, keepdim=True)

    ds = ArrayDataset(torch.zeros(6, 1, 4, 4, dtype=torch.uint8), torch.zeros(6, dtype=torch.long), ["a", "b", "c"])
    clean, robust = validation_accuracy(Flip(), ds, eps=0.1, alpha=0.05, steps=2)
    assert clean[0] == 0.0 and robust[0] == 0.0  # previously robust 1.0 (the attack "fixes" the prediction)
    assert all(v != v for v in clean[1:] + robust[1:])  # classes 1, 2 have no image: NaN, not 0


def test_lr_warmup_factor_by_hand():
    from rfbench.benchmark.train.schedule import warmup_factor

    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0  # off


def test_trainer_warms_the_lr_up_per_step_across_epochs_and_the_schedule_still_applies(tmp_path):
    """5 batches per epoch, warm-up over 7 steps, lr x 0.1 from epoch 2: the rate of every step by hand."""
    from rfbench.benchmark.train.hooks import TrainHook

    seen = []

    class Record(TrainHook):
        def before_optimizer_step(self, trainer, batch):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    trainer = Trainer(_cfg(tmp_path, "wu", epochs=2, lr_warmup_iters=7, optimizer="sgd", lr=0.1,
                           milestones=[1], gamma=0.1), quiet=True)
    trainer.hooks.append(Record())
    trainer._fit()
    want = [0.1 * (s + 1) / 7 for s in range(5)] + [0.01 * 6 / 7, 0.01 * 7 / 7, 0.01, 0.01, 0.01]
    assert seen == pytest.approx(want)


@pytest.mark.parametrize("defense", ["pgd-at", "trades"])
def test_a_compiled_run_compiles_for_the_full_batch_only_and_runs_the_partial_one_eager(tmp_path, monkeypatch, defense):
    """An epoch's last, smaller batch would compile the attack and training graphs a second time."""
    from rfbench.benchmark.train import trainer as trainer_mod

    graph_batches = []

    def counting(gm, example_inputs):  # a dynamo backend that records the batch size of each graph's images
        graph_batches.extend(t.shape[0] for t in example_inputs
                             if isinstance(t, torch.Tensor) and tuple(t.shape[1:]) == (1, 28, 28))
        return gm.forward

    monkeypatch.setattr(trainer_mod, "maybe_compile",
                        lambda model, enabled: torch.compile(model, backend=counting) if enabled else model)
    torch._dynamo.reset()
    t = Trainer(_cfg(tmp_path, "run", epochs=2, defense=defense, compile=True, max_train_samples=100,
                     batch_size=40), quiet=True)
    seen, step = [], t.defense.training_step

    def recording(model, x, y, pos):
        seen.append((len(x), isinstance(model, torch._dynamo.eval_frame.OptimizedModule)))
        return step(model, x, y, pos)

    t.defense.training_step = recording
    t.fit()
    assert seen == [(40, True), (40, True), (20, False)] * 2  # every image trained, the partial batch eager
    assert graph_batches and set(graph_batches) == {40}
