"""A training run's model and optimizer: the registered architecture sized for the dataset, checked at once."""

from __future__ import annotations

import torch
from torch import nn

from rfbench.benchmark.data import DataBundle
from rfbench.benchmark.train.config import TrainConfig
from rfbench.models import create_model


def build_model(cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
    """The registered model, sized for the dataset, with the dataset's normalisation inside.

    Checked at once on one tiny forward of the dataset's image size (a SmallCNN for 28x28
    given 32x32 images, integer logits or logits without gradient are one line, before any work).
    """
    from rfbench.benchmark.eval.model_checks import check_forward

    model = create_model(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        mean=bundle.mean, std=bundle.std, model_kwargs=cfg.model_kwargs)
    x = getattr(bundle.train, "x", None)
    if torch.is_tensor(x) and len(x):
        x = x[:2].cpu()
        check_forward(model, x.float() / 255 if x.dtype == torch.uint8 else x.float(), bundle.num_classes)
    return model


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
