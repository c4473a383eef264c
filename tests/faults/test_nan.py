"""NaN and Inf during training, through the command line and a user plugin defense.

``plugins/poisoned_defense.py:PoisonedAT`` (loaded with ``--defense FILE:Class``,
as a user's plugin is) poisons the loss or the logits of one chosen batch.
``--nan-policy stop`` must end the run with one line naming the epoch, the
batch and what went non-finite, keeping the last good checkpoint, from which the same command with
``--nan-policy skip-batch`` resumes; that policy must skip exactly the
poisoned batch and finish.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from faultkit import CHECKPOINT_EVERY, N_BATCHES, assert_one_line_error, rfbench, train_cmd

from rfbench.core.io import load_checkpoint

PLUGIN = Path(__file__).resolve().parent / "plugins" / "poisoned_defense.py"


def _poisoned(out: Path, epochs: int, policy: str, **args) -> list[str]:
    cmd = train_cmd(out, "--epochs", str(epochs), "--nan-policy", policy, "--defense", f"{PLUGIN}:PoisonedAT")
    return cmd + [f"defense_args.{k}={v}" for k, v in args.items()]


@pytest.mark.slow
@pytest.mark.parametrize("what, value, at_epoch, at_batch, epochs, shown", [
    ("loss", "nan", 1, 5, 1, "NaN loss at epoch 1, batch 5"),
    ("logits", "inf", 2, 2, 2, "Inf logits at epoch 2, batch 2"),
], ids=["nan-loss", "inf-logits"])
def test_non_finite_stops_naming_epoch_and_batch(tmp_path, what, value, at_epoch, at_batch, epochs, shown):
    out = tmp_path / "run"
    proc = rfbench(_poisoned(out, epochs, "stop", what=what, value=value, at_epoch=at_epoch, at_batch=at_batch),
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, shown, "--nan-policy skip-batch", f"{out / 'checkpoint-last.pt'} holds the last good state")
    # the last good state is the newest save before the poisoned batch, and its weights are finite
    state = load_checkpoint(out / "checkpoint-last.pt")
    done = (at_batch - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    if done:
        assert state["epoch"] == at_epoch - 1 and state["partial"]["batches_done"] == done
    else:
        assert state["epoch"] == at_epoch - 1 and state["partial"] is None
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists()
    if epochs == 1:  # the advice works: the same command with --nan-policy skip-batch resumes and skips the batch
        proc = rfbench(_poisoned(out, epochs, "skip-batch", what=what, value=value, at_epoch=at_epoch,
                                 at_batch=at_batch), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"resuming {out} from epoch 1, batch {done}" in proc.stderr
        assert f"{shown}: batch skipped" in proc.stderr
        assert json.loads((out / "log.jsonl").read_text())["skipped_batches"] == 1


@pytest.mark.slow
def test_skip_batch_skips_exactly_the_poisoned_batch_and_finishes(tmp_path):
    out = tmp_path / "run"
    proc = rfbench(_poisoned(out, 1, "skip-batch", what="loss", value="inf", at_batch=4), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Inf loss at epoch 1, batch 4: batch skipped (--nan-policy skip-batch)" in proc.stderr
    (record,) = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert record["skipped_batches"] == 1
    state = load_checkpoint(out / "checkpoint-last.pt")
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {N_BATCHES - 1}  # Adam stepped on every batch but the poisoned one
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
