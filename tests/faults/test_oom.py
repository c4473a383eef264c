"""Out of device memory during an evaluation: halve the batch, retry once per halving, say so.

A CUDA out-of-memory error is injected on the CPU by a model wrapper that
raises it (``torch.OutOfMemoryError``, or the plain ``RuntimeError("CUDA out
of memory ...")`` older code raises) whenever an attack's forward pass gets
more images than a chosen limit, which is how attack memory runs out.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from rfbench.benchmark.eval import EvalConfig, SampleFlags, evaluate
from rfbench.core.errors import RfbenchError

DETERMINISTIC = ["fgsm", "pgd:steps=3,start=none"]  # no random start: any split gives the same answer


class OOMAbove(nn.Module):
    """``model`` that runs out of "memory" when an attack (inputs needing gradients) sends more than ``limit`` images."""

    def __init__(self, model: nn.Module, limit: int, error: type[Exception] = torch.OutOfMemoryError):
        super().__init__()
        self.model, self.limit, self.error, self.raised = model, limit, error, 0

    def forward(self, x):
        if x.requires_grad and x.shape[0] > self.limit:
            self.raised += 1
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (fault injected by the test)")
        return self.model(x)


def _cfg(**kw):
    return EvalConfig(**{"attacks": DETERMINISTIC, "n_per_class": 4, "batch_size": 16,
                         "device": "cpu", "quiet": True, "channels_last": "off", **kw})  # no layout probe


@pytest.fixture(scope="module")
def plain(fmnist, fmnist_cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    return out, evaluate(fmnist_cnn, fmnist, _cfg(), out)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError], ids=["OutOfMemoryError", "RuntimeError"])
def test_oom_halves_the_batch_until_it_fits_and_gives_the_same_result(fmnist, fmnist_cnn, plain, tmp_path, caplog,
                                                                     error):
    model = OOMAbove(fmnist_cnn, limit=5, error=error)
    with caplog.at_level(logging.WARNING, logger="rfbench.benchmark.eval.harness"):
        result = evaluate(model, fmnist, _cfg(), tmp_path)
    said = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    # 16 -> 8 -> 4 on the first batch (one retry per halving), then the next batches start at 4
    assert said == ["out of memory on batch 1 at batch size 16: retrying with batch size 8",
                    "out of memory on batch 1 at batch size 8: retrying with batch size 4"]
    assert model.raised == 2
    assert result["provenance"]["oom_halvings"] == [{"batch": 0, "from": 16, "to": 8}, {"batch": 0, "from": 8, "to": 4}]
    _, want = plain
    for key in ("per_class", "summary", "confusion", "cfps", "n_per_class"):
        assert result[key] == want[key], key
    drop = {"architecture"}  # the wrapper's class name, not a number
    assert ({k: v for k, v in result["robustbench"].items() if k not in drop}
            == {k: v for k, v in want["robustbench"].items() if k not in drop})
    a, b = SampleFlags.load(tmp_path / "flags.npz"), SampleFlags.load(plain[0] / "flags.npz")
    for key in ("clean_pred", "adv_pred", "ran", "pert", "done"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def test_a_layout_probe_out_of_memory_keeps_the_default_layout(fmnist, fmnist_cnn, plain, tmp_path):
    model = OOMAbove(fmnist_cnn, limit=5)
    result = evaluate(model, fmnist, _cfg(channels_last="auto"), tmp_path)
    assert result["provenance"]["channels_last"] is False
    assert model.raised == 3  # the probe's batch, then 16 -> 8 -> 4 as above
    assert result["per_class"] == plain[1]["per_class"]


def test_random_start_attacks_after_oom_are_seeded_per_piece_and_reproducible(fmnist, fmnist_cnn, tmp_path):
    cfg = _cfg(attacks=["pgd:steps=3"])
    first = evaluate(OOMAbove(fmnist_cnn, limit=8), fmnist, cfg, tmp_path / "a")
    again = evaluate(OOMAbove(fmnist_cnn, limit=8), fmnist, cfg, tmp_path / "b")
    assert first["provenance"]["oom_halvings"] == [{"batch": 0, "from": 16, "to": 8}]
    assert first["per_class"] == again["per_class"] and first["confusion"] == again["confusion"]


def test_oom_with_one_image_is_a_clear_error(fmnist, fmnist_cnn, tmp_path):
    # the model check before any attack (a 2-image forward) already runs out of memory: one clear line
    with pytest.raises(RfbenchError, match=r"^out of memory in the model check"):
        evaluate(OOMAbove(fmnist_cnn, limit=0), fmnist, _cfg(), tmp_path)
    assert not (tmp_path / "result.json").exists()


def test_other_runtime_errors_are_not_taken_for_oom(fmnist, fmnist_cnn, tmp_path):
    class Broken(OOMAbove):
        def forward(self, x):
            if x.requires_grad:
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
            return self.model(x)

    with pytest.raises((RuntimeError, RfbenchError), match="shapes cannot be multiplied"):
        evaluate(Broken(fmnist_cnn, 0), fmnist, _cfg(), tmp_path)
