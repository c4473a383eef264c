"""Host-device synchronisations in the hot loops, counted on CPU.

On a GPU every read of a tensor's value on the host (``.item()``, ``.tolist()``, ``float(t)``,
``bool(t)``, ``.cpu()``, ``.numpy()``) waits for the queue to drain.  These tests count such reads
by wrapping the ``torch.Tensor`` methods that perform them, so a new one in a training step or an
attack fails here, on a machine without a GPU:

* a training step makes exactly one host read (the batch's non-finite flag, loss and logged terms,
  read together in ``Trainer._step``), whatever the defense;
* the evaluation attacks make none (early stop masks samples instead of breaking out of the loop).
"""

from __future__ import annotations

import collections

import pytest
import torch

from rfbench.attacks import build_attacks
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.hooks import Batch
from rfbench.benchmark.train.trainer import Trainer
from rfbench.core.threat import Threat
from rfbench.models import create_model

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")


@pytest.fixture
def host_reads(monkeypatch):
    """A counter of host reads, active from the first call of the returned ``start()``."""
    counts: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def start():
        for name, fn in originals.items():
            def counted(self, *a, _fn=fn, _name=name, **k):
                counts[_name] += 1
                return _fn(self, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, counted)
        return counts

    return start


@pytest.mark.parametrize("defense", ["pgd-at", "trades", "mart", "cfa", "cfol", "wat", "robal", "awp-at", "taet"])
def test_a_training_step_reads_the_device_once(tmp_path, host_reads, defense):
    cfg = TrainConfig(dataset="fashion-mnist", model="cnn3", model_kwargs={"width": 0.5}, defense=defense,
                      max_train_samples=256, val_per_class=5, steps=2, batch_size=32, epochs=1, device="cpu",
                      channels_last="off", out=str(tmp_path / defense))
    trainer = Trainer(cfg, quiet=True)
    trainer._begin_epoch(0)
    x, y, pos = next(iter(trainer._epoch_batches(0, 0)[0]))
    counts = host_reads()
    assert trainer._step(Batch(0, 0, x, y, pos, len(y)))
    assert sum(counts.values()) == 1, dict(counts)
    assert counts["tolist"] == 1


@pytest.mark.parametrize("spec", ["fgsm", "pgd:steps=5", "cw:steps=5", "temperature-pgd:steps=5", "lsa:steps=5"])
def test_evaluation_attacks_never_read_the_device(host_reads, spec):
    torch.manual_seed(0)
    model = create_model("cnn3", num_classes=10, in_channels=1, width=0.5).eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    attack = build_attacks([spec], model, Threat(norm="linf", eps=0.1, alpha=0.025, steps=7))[0]
    counts = host_reads()
    x_adv = attack(x, y, seed=1)
    assert sum(counts.values()) == 0, dict(counts)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
