"""The training configuration: one typed dataclass, with the protocol's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rfbench.core.config import choice, in_range
from rfbench.core.errors import ConfigError


@dataclass
class TrainConfig:
    """Everything ``rfbench train`` needs.  ``None`` threat values take the dataset's protocol default."""

    # data
    dataset: str = "fashion-mnist"  # registry name, NAME-lt, imagefolder:PATH or imagenet:PATH
    data_root: str | None = None  # local root; None = the dataset's default places
    download: bool = False  # let torchvision download when files are missing
    imbalance_ratio: float | None = field(default=None, metadata=in_range(1, None))  # ρ (head/tail); NAME-lt implies 50
    val_per_class: int | None = field(default=None, metadata=in_range(1, None))  # default: 2% of the largest class (of max_train_samples, if set), >= 20
    val_borrow: str = field(default="remove", metadata=choice("remove", "share"))  # LT head-class validation images
    max_train_samples: int | None = field(default=None, metadata=in_range(1, None))  # stratified subset, for quick runs
    # augmentation policy on top of the dataset's crop/flip (benchmark/data/augment.py; AT-BSL's RA / AuA)
    augment: str = field(default="none", metadata=choice("none", "randaugment", "autoaugment"))
    augment_ops: int = field(default=2, metadata=in_range(1, None))  # RandAugment: operations per image
    augment_magnitude: int = field(default=9, metadata=in_range(0, 30))  # RandAugment: magnitude (of 31 bins)
    augment_policy: str = field(default="cifar10", metadata=choice("cifar10", "imagenet", "svhn"))  # AutoAugment
    # model
    model: str = "smallcnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # checkpoint to start from (FRL fine-tunes a PGD-AT/TRADES run)
    # defense
    defense: str = "pgd-at"  # name, entry point, or module:Class
    defense_args: dict[str, Any] = field(default_factory=dict)
    awp_gamma: float = field(default=0.0, metadata=in_range(0, None))  # AWP (defenses/awp.py) on any defense; 0 = off
    awp_warmup: float = field(default=0.0, metadata=in_range(0, 1))  # fraction of the budget before AWP starts
    # paper = the method as its paper describes it (rfbench's default); released = as its authors' code runs it
    # (attack BN mode, random start and its clipping, schedules, statistics, defaults: docs/defenses.md)
    fidelity: str = field(default="paper", metadata=choice("paper", "released"))
    # threat model of the training attack
    norm: str | None = field(default=None, metadata=choice("linf", "l2"))
    eps: float | None = field(default=None, metadata=in_range(0, 1))
    alpha: float | None = field(default=None, metadata=in_range(0, 1))
    steps: int | None = field(default=None, metadata=in_range(1, None))
    eps_warmup_epochs: int | None = field(default=None, metadata=in_range(0, None))  # ramp eps linearly over N epochs
    # optimisation
    epochs: int = field(default=2, metadata=in_range(1, None))
    batch_size: int = field(default=128, metadata=in_range(1, None))
    optimizer: str = field(default="sgd", metadata=choice("sgd", "adam", "adamw"))
    lr: float = field(default=0.1, metadata=in_range(0, 10))  # above 10 no optimiser here trains (and 1e39 overflows float32)
    momentum: float = field(default=0.9, metadata=in_range(0, 1))
    nesterov: bool = False
    weight_decay: float = field(default=5e-4, metadata=in_range(0, None))
    schedule: str = field(default="multistep", metadata=choice("multistep", "cosine", "constant"))
    milestones: list[int] = field(default_factory=list)  # epochs at which lr *= gamma (multistep)
    milestone_fractions: list[float] = field(default_factory=list)  # or as fractions of `epochs` (used when milestones is empty)
    gamma: float = field(default=0.1, metadata=in_range(0, 1))
    lr_warmup_iters: int = field(default=0, metadata=in_range(0, None))  # linear lr warm-up over the first N steps
    # validation and selection
    val_steps: int = field(default=10, metadata=in_range(1, None))  # PGD steps of the per-epoch validation attack
    select: str = field(default="mean+worst", metadata=choice("mean", "worst", "mean+worst"))
    # execution
    seed: int = field(default=0, metadata=in_range(0, 2**63 - 1))  # torch generators take 64-bit seeds
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = field(default="auto", metadata=choice("auto", "bf16", "off"))  # auto = bf16 on CUDA, off on CPU
    channels_last: str = field(default="auto", metadata=choice("auto", "on", "off"))  # auto = on for CUDA and CPU bf16
    compile: bool = False  # torch.compile the model for training (and its attack); checkpoints keep plain keys
    nan_policy: str = field(default="stop", metadata=choice("stop", "skip-batch"))
    checkpoint_every: int = field(default=0, metadata=in_range(0, None))  # also save mid-epoch every N batches (0 = epoch ends only)
    out: str = "runs/demo"
    # experiment loggers (benchmark/train/loggers.py), optional extras, offline by default; [] = none
    logger: list[str] = field(default_factory=list, metadata=choice("tensorboard", "mlflow", "wandb"))

    def validate(self) -> None:
        """Cross-field checks that a single field's metadata cannot express."""
        if any(m < 1 for m in self.milestones):
            raise ConfigError(f"config: 'milestones' must be epochs >= 1, got {self.milestones}")
        if any(not 0 < f <= 1 for f in self.milestone_fractions):
            raise ConfigError(f"config: 'milestone_fractions' must be in (0, 1], got {self.milestone_fractions}")
        if self.milestones and self.milestone_fractions:
            raise ConfigError("config: give 'milestones' (epochs) or 'milestone_fractions', not both")
