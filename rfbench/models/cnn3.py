"""CNN3: rfbench's own small net for the Fashion-MNIST CPU tracks (ours, not from a paper).

Three 3x3 conv blocks (16-32-64 channels, padding 1, batch norm, ReLU, 2x2 max-pool), then fc 128 and the
linear head: about 0.1 M parameters, sized so that PGD-7 adversarial training on all 60,000 Fashion-MNIST
images for 3 epochs fits in minutes on 2 CPU cores. Batch norm lets plain SGD converge within that budget.
"""

from __future__ import annotations

from torch import nn

from rfbench.models.base import RFModel, register_model


def _block(cin: int, cout: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU(inplace=True), nn.MaxPool2d(2)]


class CNN3(RFModel):
    """conv16-pool-conv32-pool-conv64-pool-fc128, then the linear head; 128-d features (ours).

    ``width`` scales every channel and hidden-unit count; ``bn`` toggles batch norm after each conv.
    """

    def __init__(self, num_classes=10, in_channels=1, mean=(0.0,), std=(1.0,), width: float = 1.0,
                 image_size: int = 28, bn: bool = True):
        super().__init__(num_classes, mean, std)
        c1, c2, c3, h = (max(1, int(c * width)) for c in (16, 32, 64, 128))
        spatial = image_size // 2 // 2 // 2
        self.body = nn.Sequential(
            *_block(in_channels, c1, bn), *_block(c1, c2, bn), *_block(c2, c3, bn),
            nn.Flatten(), nn.Linear(c3 * spatial * spatial, h), nn.ReLU(inplace=True),
        )
        self._init_head(h)


@register_model("cnn3")
def cnn3(num_classes=10, in_channels=1, mean=(0.0,), std=(1.0,), width: float = 1.0, image_size: int = 28,
         bn: bool = True) -> CNN3:
    """CNN3 (rfbench's own 3-conv net with batch norm), 128-d features; for MNIST and Fashion-MNIST."""
    return CNN3(num_classes, in_channels, mean, std, width=width, image_size=image_size, bn=bn)
