"""Every registered defense through the real trainer: 2 tiny epochs, eager and compiled, checkpoint, resume, evaluate.

The defense unit tests build ``EpochStats`` by hand; this file is where each
defense meets the trainer it runs in: the compile wrapper (a defense must only
ever see the bare module outside its loss), checkpoints with its state and
weight averages, an exact resume, and ``load_run_model`` + the evaluation
harness on every checkpoint it writes.

Under ``compile`` the test uses ``torch.compile(backend="eager")``: the same
``OptimizedModule`` wrapper and graph capture as ``--compile``, without
inductor's code generation (about a minute per model on CPU).  The wrapper
is what broke CFA under ``--compile`` (FAWA indexed the wrapper's
``_orig_mod.``-prefixed state dict with the bare module's keys).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rfbench.benchmark.eval.harness import EvalConfig, evaluate
from rfbench.benchmark.train import trainer as trainer_mod
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.rundir import load_run_model
from rfbench.benchmark.train.trainer import Trainer
from rfbench.core.io import load_checkpoint
from rfbench.defenses import list_defenses

TINY: dict[str, Any] = dict(dataset="fashion-mnist", model="smallcnn", model_kwargs={"width": 0.25}, max_train_samples=100,
            val_per_class=2, steps=1, val_steps=1, batch_size=50, lr=0.01, device="cpu", seed=1)


def _train(out, name: str, epochs: int, compile: bool) -> Trainer:
    t = Trainer(TrainConfig(**TINY, defense=name, epochs=epochs, compile=compile, out=str(out)), quiet=True)
    t.fit()
    return t


class _Stopped(Exception):
    """Raised right after epoch 1's checkpoint is written: a 2-epoch run stopped there."""


def _train_stopped_after_epoch_1(out, name: str, compile: bool) -> None:
    """Start the same 2-epoch run and stop it after its first epoch's checkpoint.

    The budget must be the same as the straight run's: budget-fraction schedules (TAET's stabilisation phase,
    DAFA's warm-up, milestone fractions) depend on it, so a 1-epoch run is a different run, not a prefix.
    """
    checkpoint_epoch = Trainer._checkpoint_epoch

    def stop_after(self, *args, **kwargs):
        checkpoint_epoch(self, *args, **kwargs)
        raise _Stopped

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_checkpoint_epoch", stop_after)
        with pytest.raises(_Stopped):
            _train(out, name, 2, compile)


@pytest.fixture
def eager_compile(monkeypatch):
    """``--compile`` with the eager backend (the wrapper and dynamo capture, no code generation)."""
    monkeypatch.setattr(trainer_mod, "maybe_compile",
                        lambda model, enabled: torch.compile(model, backend="eager") if enabled else model)


def _run(tmp_path, name: str, compile: bool, fmnist) -> None:
    straight = _train(tmp_path / "straight", name, 2, compile)
    assert isinstance(straight.model, torch._dynamo.eval_frame.OptimizedModule) == compile
    _train_stopped_after_epoch_1(tmp_path / "resumed", name, compile)
    resumed = _train(tmp_path / "resumed", name, 2, compile)  # resumes from the end of epoch 1
    assert resumed.start_epoch == 1
    a = load_checkpoint(tmp_path / "straight" / "checkpoint-last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint-last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert not any(k.startswith("_orig_mod") for k in a["model"]), "checkpoint keys must be the bare module's"
    for k in a["model"]:  # resume is exact on CPU
        assert torch.equal(a["model"][k], b["model"][k]), f"{name}: {k} differs after resume"
    assert a["extra_models"].keys() == b["extra_models"].keys()
    for m in a["extra_models"]:
        for k in a["extra_models"][m]:
            assert torch.equal(a["extra_models"][m][k], b["extra_models"][m][k]), f"{name}: {m}.{k}"
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    # every checkpoint the run offers loads and evaluates
    which = ["best", "last"] + [w for m in a["extra_models"] for w in (m, f"{m}-best")]
    for w in which:
        model, info = load_run_model(tmp_path / "resumed", w)
        cfg = EvalConfig(attacks=["fgsm"], n_per_class=1, batch_size=100, plot=False, device="cpu")
        result = evaluate(model, fmnist, cfg, tmp_path / f"eval-{w}", source={"run": str(tmp_path), "which": w})
        assert len(result["per_class"]["clean"]) == fmnist.num_classes, w
        assert result["threat"]["eps"] == pytest.approx(fmnist.threat.eps), w


@pytest.mark.parametrize("name", list_defenses())
def test_defense_trains_resumes_and_evaluates_eagerly(tmp_path, name, fmnist):
    _run(tmp_path, name, False, fmnist)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_defenses())
def test_defense_trains_resumes_and_evaluates_compiled(tmp_path, name, fmnist, eager_compile):
    _run(tmp_path, name, True, fmnist)
