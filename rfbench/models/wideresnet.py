"""Wide ResNets (Zagoruyko & Komodakis, BMVC 2016): WRN-34-10 (TRADES, MART, RoBal) and WRN-28-10 (REAT); 640-d features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rfbench.models.base import RFModel, register_model


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        sc = x if self.equal else self.shortcut(o)
        out = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return out + sc


class WideResNet(RFModel):
    """WRN-depth-widen: pre-activation wide blocks, ``(depth-4)/6`` blocks per stage."""

    def __init__(self, depth: int, widen: int, num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,)):
        super().__init__(num_classes, mean, std)
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        blocks: list[nn.Module] = []
        cin = w[0]
        for stage, cout in enumerate(w[1:]):
            for j in range(n):
                blocks.append(WideBlock(cin, cout, 2 if (j == 0 and stage > 0) else 1))
                cin = cout
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False),
            *blocks,
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self._init_head(cin)


@register_model("wrn34_10")
def wrn34_10(num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), widen: int = 10) -> WideResNet:
    """WRN-34-10 (TRADES, MART, RoBal recipes), 640-d features."""
    return WideResNet(34, widen, num_classes, in_channels, mean, std)


@register_model("wrn28_10")
def wrn28_10(num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), widen: int = 10) -> WideResNet:
    """WRN-28-10 (REAT recipe), 640-d features."""
    return WideResNet(28, widen, num_classes, in_channels, mean, std)
