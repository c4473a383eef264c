"""SmallCNN for MNIST-class data: the 4-conv/3-FC net of TRADES (Zhang et al., ICML 2019), MNIST experiments."""

from __future__ import annotations

from torch import nn

from rfbench.models.base import RFModel, register_model


class SmallCNN(RFModel):
    """conv32-conv32-pool-conv64-conv64-pool-fc200-fc200, then the linear head; 200-d features.

    ``width`` scales every channel and hidden-unit count (1.0 is the paper's size).
    """

    def __init__(self, num_classes=10, in_channels=1, mean=(0.0,), std=(1.0,), width: float = 1.0, image_size: int = 28):
        super().__init__(num_classes, mean, std)
        c1, c2, h = int(32 * width), int(64 * width), int(200 * width)
        spatial = ((image_size - 4) // 2 - 4) // 2
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * spatial * spatial, h), nn.ReLU(inplace=True),
            nn.Linear(h, h), nn.ReLU(inplace=True),
        )  # fmt: skip
        self._init_head(h)


@register_model("smallcnn")
def smallcnn(num_classes=10, in_channels=1, mean=(0.0,), std=(1.0,), width: float = 1.0, image_size: int = 28) -> SmallCNN:
    """SmallCNN (TRADES' MNIST net), 200-d features; for MNIST and Fashion-MNIST."""
    return SmallCNN(num_classes, in_channels, mean, std, width=width, image_size=image_size)
