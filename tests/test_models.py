"""Every registered model: [0,1] inputs, forward shape, features, and a gradient on every parameter."""

import pytest
import torch

from rfbench.core.errors import UnknownNameError
from rfbench.models import MODELS, Normalize, create_model, list_models

MNIST_NETS = {"smallcnn", "cnn3"}  # 28x28 grayscale nets; the others take 32x32 RGB
SMALL = {"smallcnn": {}, "cnn3": {}, "resnet18": {"width": 0.125}, "preact_resnet18": {"width": 0.125},
         "wrn34_10": {"widen": 1}, "wrn28_10": {"widen": 1}}
FEATURES = {"smallcnn": 200, "cnn3": 128, "resnet18": 64, "preact_resnet18": 64, "wrn34_10": 64, "wrn28_10": 64}


def _input(name):
    return torch.rand(3, 1, 28, 28) if name in MNIST_NETS else torch.rand(3, 3, 32, 32)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_parameter(name):
    torch.manual_seed(0)
    in_ch = 1 if name in MNIST_NETS else 3
    model = create_model(name, num_classes=7, in_channels=in_ch, mean=(0.5,), std=(0.25,), **SMALL.get(name, {}))
    x = _input(name)
    logits = model(x)
    assert logits.shape == (3, 7)
    assert model.features(x).shape == (3, FEATURES[name])
    torch.testing.assert_close(model.head(model.features(x)), logits)
    logits.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


def test_full_size_parameter_counts_match_the_spec():
    # performance.md: ResNet-18 11.2 M, WRN-28-10 36.5 M, WRN-34-10 46.2 M parameters
    count = lambda n: sum(p.numel() for p in create_model(n).parameters()) / 1e6
    assert round(count("resnet18"), 1) == 11.2
    assert round(count("preact_resnet18"), 1) == 11.2
    assert round(count("wrn28_10"), 1) == 36.5
    assert round(count("wrn34_10"), 1) == 46.2


def test_normalisation_happens_inside_the_model():
    norm = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    x = torch.full((1, 3, 2, 2), 0.5)
    out = norm(x)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.5]))
    m = create_model("smallcnn", mean=(0.2860,), std=(0.3530,))
    assert "normalize.mean" in m.state_dict()  # checkpoints carry the normalisation


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid models: .*resnet18.*smallcnn"):
        create_model("resnet19")
    assert MODELS.names("resnet*") == ["resnet18"]
