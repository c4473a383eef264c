"""ResNet-18 in its CIFAR form and PreAct-ResNet-18.

* ResNet-18: He et al., CVPR 2016, with the CIFAR stem used by the
  adversarial-training literature (3×3 conv, stride 1, no max-pool), 512-d features.
* PreAct-ResNet-18: He et al., ECCV 2016 ("Identity mappings"), as used by
  Rice et al. 2020, FRL and CFA; 512-d features.

Both use adaptive average pooling, so they accept any input size ≥ 8 (they are
built for 32×32; larger images just cost more).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.models.base import RFModel, register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


def _stages(block: type[nn.Module], widths: list[int], depths: list[int]) -> nn.Sequential:
    layers, cin = [], widths[0]
    for i, (w, d) in enumerate(zip(widths, depths)):
        for j in range(d):
            layers.append(block(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w
    return nn.Sequential(*layers)


class ResNet18(RFModel):
    """ResNet-18, CIFAR form; ``width`` scales channels (1.0 = 64-128-256-512)."""

    def __init__(self, num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), width: float = 1.0):
        super().__init__(num_classes, mean, std)
        w = [int(c * width) for c in (64, 128, 256, 512)]
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(inplace=True),
            _stages(BasicBlock, w, [2, 2, 2, 2]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self._init_head(w[-1])


class PreActResNet18(RFModel):
    """PreAct-ResNet-18; ``width`` scales channels."""

    def __init__(self, num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), width: float = 1.0):
        super().__init__(num_classes, mean, std)
        w = [int(c * width) for c in (64, 128, 256, 512)]
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False),
            _stages(PreActBlock, w, [2, 2, 2, 2]),
            nn.BatchNorm2d(w[-1]),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self._init_head(w[-1])


@register_model("resnet18")
def resnet18(num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), width: float = 1.0) -> ResNet18:
    """ResNet-18 (CIFAR form: 3×3 stem, no max-pool), 512-d features."""
    return ResNet18(num_classes, in_channels, mean, std, width)


@register_model("preact_resnet18")
def preact_resnet18(num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), width: float = 1.0) -> PreActResNet18:
    """PreAct-ResNet-18 (Rice et al. 2020; FRL, CFA), 512-d features."""
    return PreActResNet18(num_classes, in_channels, mean, std, width)
