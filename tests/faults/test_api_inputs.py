"""The Python API's inputs: each bad value is one line naming it and why, never a silent change or a raw error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rfbench
from rfbench.benchmark.data.longtail import longtail_counts
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.trainer import load_bundle
from rfbench.core.errors import RfbenchError

KW = dict(eps=0.05, device="cpu", quiet=True, batch_size=8, attacks=["fgsm"])


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def data(n=12):
    torch.manual_seed(1)
    return torch.rand(n, 1, 4, 4), torch.arange(n) % 3


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("kw, fragment", [
    ({"alpha": 0}, "alpha=0"),
    ({"alpha": float("nan")}, "alpha=nan"),
    ({"steps": 0}, "steps=0"),
    ({"steps": -2}, "steps=-2"),
])
def test_bad_threat_arguments(kw, fragment):
    x, y = data()
    with pytest.raises(RfbenchError) as info:
        rfbench.evaluate(tiny(), x, y, **{**KW, **kw})
    assert fragment in one_line(info)


def test_steps_given_are_the_steps_used():
    x, y = data()
    report = rfbench.evaluate(tiny(), x, y, **{**KW, "attacks": ["pgd"], "steps": 3})
    assert report.result["threat"]["steps"] == 3


def test_float_labels_are_refused_not_truncated():
    x, y = data()
    with pytest.raises(RfbenchError) as info:
        rfbench.evaluate(tiny(), x, y.float() + 0.7, **KW)
    assert "float32 labels" in one_line(info)


def test_labels_out_of_range_and_count():
    x, y = data()
    y[4] = 7
    with pytest.raises(RfbenchError, match="label 7, but there are 3 classes"):
        rfbench.evaluate(tiny(), x, y, **KW)
    with pytest.raises(RfbenchError, match="11 labels for 12 images"):
        rfbench.evaluate(tiny(), x, data()[1][:11], **KW)


def test_n_per_class_above_the_set_and_duplicate_classes():
    x, y = data()
    with pytest.raises(RfbenchError, match="n_per_class=5 is more than class 'a' has \\(4 images\\)"):
        rfbench.evaluate(tiny(), x, y, classes=["a", "b", "c"], n_per_class=5, **KW)
    with pytest.raises(RfbenchError, match="'a' twice"):
        rfbench.evaluate(tiny(), x, y, classes=["a", "b", "a"], **KW)


def test_nhwc_arrays_are_named():
    _, y = data()
    nhwc = np.random.default_rng(0).random((12, 8, 8, 3), dtype=np.float32)  # what PIL / NumPy pipelines give
    with pytest.raises(RfbenchError) as info:
        rfbench.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), nhwc, y, **KW)
    assert "N×H×W×C" in one_line(info) and "permute(0, 3, 1, 2)" in str(info.value)


def test_nan_pixels_are_blamed_on_the_input():
    x, y = data()
    x[5, 0, 1, 1] = float("nan")
    with pytest.raises(RfbenchError) as info:
        rfbench.evaluate(tiny(), x, y, **KW)
    text = one_line(info)
    assert "NaN or Inf pixel" in text and "image 5" in text and "not the model" in text


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny()

    def forward(self, x):
        x.mul_(0.5)  # modifies the caller's images
        return self.net(x)


def test_a_model_that_changes_its_input_in_place_is_named():
    x, y = data()
    with pytest.raises(RfbenchError) as info:
        rfbench.evaluate(InPlace(), x, y, classes=3, **KW)
    assert "changes its input images in place" in one_line(info)


def test_meta_models_and_meta_outputs():
    x, y = data()
    with torch.device("meta"):
        meta = tiny()
    with pytest.raises(RfbenchError, match="meta device"):
        rfbench.evaluate(meta, x, y, classes=3, **KW)

    class MetaOut(nn.Module):
        def forward(self, x):
            return torch.empty(x.shape[0], 3, device="meta")

    for classes in (None, 3):
        with pytest.raises(RfbenchError, match="outputs on the meta device"):
            rfbench.evaluate(MetaOut(), x, y, classes=classes, **KW)


def test_training_subsets_and_ratios_that_cannot_be_honoured():
    with pytest.raises(RfbenchError) as info:
        load_bundle(TrainConfig(dataset="fashion-mnist", max_train_samples=5, device="cpu"))
    assert "max_train_samples=5 is fewer than the 10 classes" in one_line(info)
    assert len(load_bundle(TrainConfig(dataset="fashion-mnist", max_train_samples=10, device="cpu")).train) == 10
    with pytest.raises(RfbenchError, match="imbalance_ratio=1e\\+09 leaves the last class with no training image"):
        longtail_counts(5000, 10, 1e9)
    assert longtail_counts(5000, 10, 5000)[-1] == 1
