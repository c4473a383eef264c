"""Foreign checkpoints (kuangliu / RobustBench / AutoAttack / TRADES key layouts) load into the registered models.

Each reference module below reproduces the *key layout* and forward pass of the
published architecture (kuangliu/pytorch-cifar ``models/resnet.py``; the
PreAct-ResNet-18 of Rice et al. 2020 as in RobustBench's model zoo; the
WideResNet of yaodongyu/TRADES ``models/wideresnet.py``, which RobustBench and
AutoAttack use too).  A state_dict saved from it must load into our model and
give the same logits on unnormalised [0,1] inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rfbench.benchmark.eval.models import from_registry
from rfbench.core.errors import RfbenchError
from rfbench.models import create_model
from rfbench.models.layouts import convert_state_dict, detect_layout


class KBasic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class KResNet18(nn.Module):
    """kuangliu ResNet-18: conv1, bn1, layer1..4, avg_pool2d(4), linear."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for w, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(KBasic(cin, w, s), KBasic(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class PBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + sc


class RicePreAct18(nn.Module):
    """PreAct-ResNet-18 of Rice et al. 2020 / RobustBench: conv1, layer1..4, bn, linear."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        cin, layers = 64, []
        for w, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(PBlock(cin, w, s), PBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.relu(self.bn(out))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class TBasic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equalInOut = cin == cout
        self.convShortcut = None if self.equalInOut else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return (x if self.equalInOut else self.convShortcut(x)) + out


class TNetworkBlock(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[TBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class TradesWRN(nn.Module):
    """TRADES WideResNet: conv1, block1 (+ the unused sub_block1), block2, block3, bn1, relu, fc."""

    def __init__(self, depth=34, widen=10, num_classes=10):
        super().__init__()
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = TNetworkBlock(n, ch[0], ch[1], 1)
        self.sub_block1 = TNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = TNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = TNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.avg_pool2d(out, 8).flatten(1))


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _check(ref: nn.Module, name: str, expect_layout: str, prefix: str = "", **model_args):
    torch.manual_seed(0)
    _randomise_bn(ref)
    ref.eval()
    state = {prefix + k: v for k, v in ref.state_dict().items()}
    assert detect_layout({k[len(prefix):]: v for k, v in state.items()}) == expect_layout
    ours = create_model(name, num_classes=10, in_channels=3, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), **model_args)
    conv, info = convert_state_dict(ours, name, state)
    assert info["layout"] == expect_layout and info["normalization"].startswith("identity")
    ours.load_state_dict(conv, strict=True)
    ours.eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()


def test_kuangliu_resnet18_with_dataparallel_prefix():
    _check(KResNet18(), "resnet18", "kuangliu", prefix="module.")


def test_rice_robustbench_preact_resnet18():
    _check(RicePreAct18(), "preact_resnet18", "robustbench")


@pytest.mark.parametrize("depth,name", [(34, "wrn34_10"), (28, "wrn28_10")])
def test_trades_wideresnet(depth, name):
    _check(TradesWRN(depth, widen=2), name, "trades", widen=2)


def test_kuangliu_preact_without_final_bn_is_refused():
    state = {k: v for k, v in RicePreAct18().state_dict().items() if not k.startswith("bn.")}
    model = create_model("preact_resnet18")
    with pytest.raises(RfbenchError, match="no final BatchNorm"):
        convert_state_dict(model, "preact_resnet18", state)


def test_wrong_layout_for_the_model_is_a_one_line_error():
    with pytest.raises(RfbenchError, match="not defined for model 'smallcnn'"):
        convert_state_dict(create_model("smallcnn", in_channels=1), "smallcnn", KResNet18().state_dict(), layout="kuangliu")


def test_from_registry_loads_a_foreign_checkpoint_and_states_its_normalisation(tmp_path):
    ref = TradesWRN(28, widen=1)
    ref.eval()
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    shape = dict(num_classes=10, in_channels=3, mean=(0.4, 0.4, 0.4), std=(0.25, 0.25, 0.25))
    model, src = from_registry("wrn28_10", str(tmp_path / "w.pt"), model_args={"widen": 1}, **shape)
    assert src["weights_layout"] == "trades" and "identity" in src["input_normalization"]
    assert torch.equal(model.normalize.mean, torch.zeros(1, 3, 1, 1))
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ref(x), model(x), atol=1e-5)
    model2, src2 = from_registry("wrn28_10", str(tmp_path / "w.pt"), model_args={"widen": 1},
                                 normalization="dataset", layout="trades", **shape)
    assert torch.allclose(model2.normalize.mean, torch.full((1, 3, 1, 1), 0.4))
    # our own checkpoints keep loading unchanged (their normalize buffers included)
    own = create_model("wrn28_10", widen=1, **shape)
    torch.save(own.state_dict(), tmp_path / "own.pt")
    model3, src3 = from_registry("wrn28_10", str(tmp_path / "own.pt"), model_args={"widen": 1}, **shape)
    assert src3["weights_layout"] == "rfbench"
    assert torch.allclose(model3.normalize.std, torch.full((1, 3, 1, 1), 0.25))


def test_timm_model_with_local_weights_normalises_inside(tmp_path):
    timm = pytest.importorskip("timm")
    from rfbench.benchmark.eval.models import from_timm

    net = timm.create_model("resnet18", pretrained=False, num_classes=4, in_chans=3)
    net.eval()
    torch.save(net.state_dict(), tmp_path / "t.pt")
    shape = dict(num_classes=4, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    model, src = from_timm("resnet18", str(tmp_path / "t.pt"), **shape)
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    m = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    s = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), net((x - m) / s), atol=1e-5)  # [0,1] in, timm's normalisation inside
    assert src["kind"] == "timm" and "pretrained_cfg" in src["input_normalization"]
    model2, _ = from_timm("resnet18", str(tmp_path / "t.pt"), normalization="dataset", **shape)
    model2.eval()
    with torch.no_grad():
        assert torch.allclose(model2(x), net((x - 0.5) / 0.25), atol=1e-5)
    with pytest.raises(RfbenchError, match="needs --weights"):
        from_timm("resnet18", None, **shape)


def test_cli_eval_loads_a_kuangliu_checkpoint(tmp_path, capsys):
    from PIL import Image

    from rfbench.benchmark.cli import main
    for split in ("train", "test"):
        for c in range(2):
            d = tmp_path / "data" / split / f"c{c}"
            d.mkdir(parents=True)
            for j in range(2):
                Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(d / f"{j}.png")
    ref = KResNet18(num_classes=2)
    torch.save(ref.state_dict(), tmp_path / "k.pt")
    rc = main(["eval", "--model", "resnet18", "--weights", str(tmp_path / "k.pt"), "--dataset", f"imagefolder:{tmp_path / 'data'}",
               "--attack", "fgsm", "--attack", "lsa:steps=2", "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    assert rc == 0
    import json
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    text = json.dumps(res)
    assert '"weights_layout": "kuangliu"' in text and "identity" in text
    assert "lsa-2-x10" in text  # the logit-scaling attack through the harness
