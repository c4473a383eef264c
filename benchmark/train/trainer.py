"""The trainer every defense plugs into.

One loop for all defenses (see :mod:`rfbench.defenses.base` for the hooks it calls).
Per epoch it hands the defense per-class statistics of the training
adversarial examples and of a per-class validation (clean + PGD), keeps
``checkpoint-last.pt`` (everything needed to resume) and ``checkpoint-best.pt``
(selected on the validation split, never on the test set), and appends the
epoch's metrics to ``log.jsonl``.

Resume is exact on CPU: all randomness (shuffling, augmentation, attack
starts, validation starts) comes from explicit generators whose states are
saved in the checkpoint, and the learning rate is a pure function of the epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from rfbench.benchmark.data import DataBundle, iterate_batches, load_dataset
from rfbench.benchmark.data.subsets import stratified_subset
from rfbench.benchmark.eval.progress import DEFAULT_EVERY_S as PROGRESS_EVERY_S
from rfbench.benchmark.eval.progress import format_duration
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.distributed import (
    ShardedGenerator,
    all_reduce_sum,
    any_rank,
    barrier,
    gather_rows,
    init_distributed,
    shard,
)
from rfbench.benchmark.train.loggers import ExperimentLoggers, check_available
from rfbench.benchmark.train.runtime import (
    autocast_dtype,
    cached_channels_last,
    layout_message,
    maybe_compile,
    resolve_device,
    seed_everything,
    use_channels_last,
)
from rfbench.benchmark.train.schedule import lr_at, resolve_milestones, warmup_factor
from rfbench.benchmark.train.threads import apply_cpu_threads
from rfbench.benchmark.train.validate import validation_accuracy
from rfbench.core.config import dump_yaml, to_dict
from rfbench.core.errors import ConfigError, Interrupted, RfbenchError
from rfbench.core.io import (
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    load_state_dict_into,
    remove_stale_temps,
    save_checkpoint,
)
from rfbench.core.perclass import accuracy_from_counts, class_counts, nan_mean, nan_min
from rfbench.core.threat import Threat, resolve_threat, warmup_eps
from rfbench.defenses import EpochStats, TrainContext, build_defense
from rfbench.defenses.base import Defense, LossOutput
from rfbench.models import create_model
from rfbench.models.averaging import WeightAverages

log = logging.getLogger(__name__)

LAST, BEST, CONFIG, LOG, SUMMARY = "checkpoint-last.pt", "checkpoint-best.pt", "config.yaml", "log.jsonl", "summary.json"
# config keys that may differ between a run and its resumption
RESUMABLE_KEYS = {"out", "device", "epochs", "checkpoint_every", "nan_policy", "compile", "logger"}


class NonFiniteLossError(RfbenchError):
    """Training produced NaN or Inf."""


def threat_from(cfg: TrainConfig, bundle: DataBundle) -> Threat:
    """The training threat: the dataset's protocol values, then the config's (track/file, then CLI) values.

    The one resolution rule, :func:`rfbench.core.threat.resolve_threat`.
    """
    return resolve_threat(bundle.threat, "train", norm=cfg.norm, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps)


def load_bundle(cfg: TrainConfig) -> DataBundle:
    """The run's data: dataset, long-tail split, validation split, optional training subset."""
    bundle = load_dataset(cfg.dataset, root=cfg.data_root, download=cfg.download, imbalance_ratio=cfg.imbalance_ratio,
                          val_per_class=cfg.val_per_class, seed=cfg.seed, val_borrow=cfg.val_borrow)
    if bundle.eval_only:
        raise ConfigError(f"dataset '{cfg.dataset}' has no training split here; it can only be evaluated")
    if cfg.augment != "none":
        bundle.augment = dataclasses.replace(bundle.augment, policy=cfg.augment, num_ops=cfg.augment_ops,
                                             magnitude=cfg.augment_magnitude, autoaugment_policy=cfg.augment_policy)
        bundle.notes.append(f"augmentation: {cfg.augment} before the dataset's crop/flip")
    if cfg.max_train_samples:
        bundle.train = stratified_subset(bundle.train, cfg.max_train_samples, seed=cfg.seed)
        bundle.notes.append(f"training subset: {len(bundle.train)} images (max_train_samples={cfg.max_train_samples})")
    return bundle


def images_on_device(ds, device: torch.device):
    """``ds`` with its uint8 images moved to ``device``; labels and positions stay on the CPU.

    Batches are then gathered on the device (``iterate_batches`` indexes the
    images there); labels stay where the defenses' samplers and the
    per-class counts expect them.
    """
    return dataclasses.replace(ds, x=ds.x.to(device))


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


def selection_score(val_robust: list[float], rule: str) -> float:
    """Checkpoint-selection metric on per-class validation robust accuracy."""
    mean, worst = nan_mean(val_robust), nan_min(val_robust)  # a class without validation images (NaN) is left out
    return {"mean": mean, "worst": worst, "mean+worst": mean + worst}[rule]


class EpochAccumulator:
    """Per-class statistics of the training adversarial examples over one epoch.

    The training step makes no clean pass, so ``robust_acc`` here is the accuracy on the
    training adversarial examples (CFA's t_k, Wei et al., CVPR 2023), not the
    clean-and-adversarial robust accuracy that validation and evaluation report.
    """

    def __init__(self, num_classes: int, device: torch.device):
        c = num_classes
        self.pred_counts = torch.zeros(c, dtype=torch.long, device=device)
        self.correct = torch.zeros(c, dtype=torch.long, device=device)
        self.seen = torch.zeros(c, dtype=torch.long, device=device)
        self.prob_sum = torch.zeros(c, c, dtype=torch.float64, device=device)
        self.loss_sum = 0.0
        self.terms: dict[str, float] = {}
        self.batches = 0

    @torch.no_grad()
    def add(self, y: torch.Tensor, logits: torch.Tensor | None, loss: float, terms: dict[str, float]) -> None:
        self.batches += 1
        self.loss_sum += loss
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + float(v)
        c = self.seen.numel()
        self.seen += class_counts(y, c)
        if logits is None:
            return
        logits = logits.detach().float()
        pred = logits.argmax(1)
        self.pred_counts += class_counts(pred, c)
        self.correct += class_counts(y, c, pred == y)
        self.prob_sum.index_add_(0, y, logits.softmax(1).double())  # per-class sums of the probability vectors

    def state_dict(self) -> dict[str, Any]:
        return {"pred_counts": self.pred_counts, "correct": self.correct, "seen": self.seen,
                "prob_sum": self.prob_sum, "loss_sum": self.loss_sum, "terms": dict(self.terms),
                "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("pred_counts", "correct", "seen", "prob_sum"):
            getattr(self, k).copy_(state[k])
        self.loss_sum, self.terms, self.batches = float(state["loss_sum"]), dict(state["terms"]), int(state["batches"])

    def summary(self) -> dict[str, Any]:
        """Per class: predictions, accuracy on the training adversarial examples and mean probabilities;
        a class not seen this epoch is NaN (:mod:`rfbench.core.perclass`)."""
        return {
            "pred_counts": self.pred_counts.tolist(),
            "robust_acc": accuracy_from_counts(self.correct, self.seen).tolist(),
            "adv_probs": accuracy_from_counts(self.prob_sum, self.seen[:, None]).tolist(),
            "loss": self.loss_sum / max(1, self.batches),
            "terms": {k: v / max(1, self.batches) for k, v in self.terms.items()},
        }


class TrainHook:
    """An extension point of the training step; every method is a no-op by default.

    The trainer calls, for each batch that is not skipped::

        out = defense.training_step(model, x, y, pos)
        out.loss.backward()
        hook.before_optimizer_step(trainer, batch)      # gradients are in place
        optimizer.step()
        hook.after_optimizer_step(trainer, batch)       # weights are updated

    Hooks run in the order of ``Trainer.hooks``, the same on every rank, and
    see the bare module as ``trainer.module``.  A hook that keeps state must
    save it through the defense or the checkpoint (resume is exact only for
    what is saved).
    """

    def before_optimizer_step(self, trainer: "Trainer", batch: "Batch") -> None:
        """After ``backward``, before ``optimizer.step()``."""

    def after_optimizer_step(self, trainer: "Trainer", batch: "Batch") -> None:
        """After ``optimizer.step()``, before the defense's ``on_batch_end``."""


@dataclasses.dataclass
class Batch:
    """One training step's data: this rank's shard ``x, y, pos`` and, once stepped, the global-batch results."""

    epoch: int
    index: int  # 0-based batch index in the epoch
    x: torch.Tensor
    y: torch.Tensor
    pos: torch.Tensor
    n_global: int
    out: LossOutput | None = None
    # filled by the step: every rank's labels and adversarial logits, the global mean loss and terms
    y_all: torch.Tensor | None = None
    adv_all: torch.Tensor | None = None
    loss: float = float("nan")
    terms: dict[str, float] = dataclasses.field(default_factory=dict)


class Trainer:
    """Trains one run described by a :class:`TrainConfig` into ``cfg.out``.

    The epoch loop (:meth:`_fit`) reads as: train the epoch (:meth:`_train_epoch`,
    one :meth:`_step` per batch), validate (:meth:`_validate`), record the
    epoch (:meth:`_record_epoch`: the defense's epoch hook, the log line, the
    history), checkpoint (:meth:`_checkpoint_epoch`).  ``self.module`` is the
    bare model; ``self.model`` is what the forward goes through (the
    ``torch.compile`` and/or DistributedDataParallel wrapper of ``self.module``).
    Only the defense's ``training_step`` sees ``self.model``; everything else
    the defense receives is the bare module (and so does ``training_step`` for
    a compiled run's partial last batch: ``self.eager_model``).
    """

    def __init__(self, cfg: TrainConfig, quiet: bool = False, force: bool = False):
        self.cfg = cfg
        for name in cfg.logger:  # a missing logger package is reported before the data is loaded
            check_available(name)
        self.out = Path(cfg.out)
        self.force = force
        self.dist, self.device = init_distributed(resolve_device(cfg.device))
        if (threads := apply_cpu_threads(self.device)) is not None:
            log.info("CPU threads: %d (%s; %d cores%s)", threads.threads, threads.rule, threads.cores,
                     "" if threads.others is None else f", {threads.others:g} other processes running")
        self.quiet = quiet or not self.dist.main
        if not self.dist.main:  # one voice: rank 0 logs, the others only warn
            logging.getLogger().setLevel(logging.WARNING)
        self.amp = autocast_dtype(cfg.amp, self.device)
        self.seeds = seed_everything(cfg.seed)
        self.bundle = load_bundle(cfg)
        if self.device.type == "cuda":  # uint8 images held on the GPU: no host-to-device image copy per batch
            self.bundle.train = images_on_device(self.bundle.train, self.device)
            self.bundle.val = images_on_device(self.bundle.val, self.device)
        self.threat = threat_from(cfg, self.bundle)  # the resolved training threat (immutable)
        self.eps_warmup = (cfg.eps_warmup_epochs if cfg.eps_warmup_epochs is not None
                           else self.bundle.threat.eps_warmup_epochs)
        # independent streams: epoch order, augmentation, attack starts (each saved for exact resume)
        self.perm_gen = torch.Generator().manual_seed(cfg.seed)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.attack_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.sharded_gen = ShardedGenerator(self.attack_gen) if self.dist.enabled else None
        self.averages = WeightAverages()
        self.ctx = TrainContext(
            num_classes=self.bundle.num_classes, train_counts=self.bundle.train_counts, threat=self.threat,
            epochs=cfg.epochs, device=self.device, autocast_dtype=self.amp,
            generator=self.sharded_gen or self.attack_gen,
            val_loader=lambda bs=512: iterate_batches(self.bundle.val, bs, device=self.device),
            lr_milestones=resolve_milestones(cfg.milestones, cfg.milestone_fractions, cfg.epochs), averages=self.averages,
        )
        self.defense: Defense = build_defense(cfg.defense, cfg.defense_args, self.ctx)
        if cfg.awp_gamma > 0:  # adversarial weight perturbation around any defense's loss
            from rfbench.defenses.awp import with_awp
            self.defense = with_awp(self.defense, cfg.awp_gamma, cfg.awp_warmup)
        model = self.defense.setup_model(build_model(cfg, self.bundle)).to(self.device)
        self.channels_last = self._choose_layout(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.init:
            load_state_dict_into(model, load_checkpoint(cfg.init), source=f"init checkpoint {cfg.init}")
            log.info("initialised weights from %s", cfg.init)
        self.module = model  # the bare module: state_dicts, validation, checkpoints, averages and defense hooks use it
        self.averages.attach(model)
        self.optimizer = build_optimizer(cfg, model)
        model = maybe_compile(model, cfg.compile)  # training forward and the defense's attack
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        # compiled, one process: a batch of another size (an epoch's last, partial one) runs eager, since
        # a new size would compile the attack and training graphs again, dynamic-shaped (slower than the
        # one eager batch they serve).  Under DDP every rank must go through its wrapper: no fallback.
        self.eager_model = self.module if cfg.compile and not self.dist.enabled else None
        self.hooks: list[TrainHook] = []  # before/after optimizer-step extension points (TrainHook)
        self.history: list[dict[str, Any]] = []
        self.best_score = float("-inf")
        self.start_epoch = 0
        self.partial: dict[str, Any] | None = None  # mid-epoch state to resume from
        self._signal: int | None = None
        # experiment loggers (rank 0 only); a missing package fails here, before any training
        self.loggers = ExperimentLoggers(cfg.logger if self.dist.main else [], self.out, classes=list(self.bundle.classes),
                                         config=self._resolved())

    # -- checkpoints ------------------------------------------------------------
    def _resolved(self) -> dict[str, Any]:
        return to_dict(self.cfg)

    def _choose_layout(self, model: nn.Module) -> bool:
        """``channels_last``: the setting, or under ``auto`` on CPU fp32 the faster layout measured on this model.

        A resumed run keeps the layout it started with; under DDP every rank follows a rank that chose
        channels-last, so all ranks share one layout.
        """
        cfg = self.cfg
        choice = use_channels_last(cfg.channels_last, self.device, self.amp)
        if choice is not None:
            return choice
        saved = (load_checkpoint(self.out / LAST, map_location="cpu").get("runtime", {})
                 if not self.force and (self.out / LAST).exists() else {})
        if "channels_last" in saved:
            return bool(saved["channels_last"])
        b = self.bundle
        choice, ms, cached = cached_channels_last(model, (cfg.batch_size, b.in_channels, *b.image_size), self.device)
        choice = any_rank(choice, self.dist, self.device)
        log.info("%s", layout_message(choice, ms, cached))
        return choice

    def _meta(self) -> dict[str, Any]:
        """What rebuilding the model needs without loading the dataset."""
        b = self.bundle
        return {"dataset": b.name, "num_classes": b.num_classes, "in_channels": b.in_channels,
                "image_size": list(b.image_size), "mean": list(b.mean), "std": list(b.std),
                "classes": list(b.classes), "train_counts": b.train_counts,
                "threat": dataclasses.asdict(self.threat),
                "imbalance_ratio": b.imbalance_ratio, "notes": list(b.notes)}

    def _state(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": len(self.history),
            "partial": partial,
            "defense_state": self.defense.state_dict(),
            "extra_models": self.averages.state_dict(),
            "perm_gen": self.perm_gen.get_state(),
            "aug_gen": self.aug_gen.get_state(),
            "attack_gen": self.attack_gen.get_state(),
            "history": self.history,
            "best_score": self.best_score,
            "config": self._resolved(),
            "meta": self._meta(),
            "runtime": {"channels_last": self.channels_last},
        }

    def _check_same_run(self, saved: dict[str, Any]) -> None:
        now = self._resolved()
        diff = sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_KEYS and now.get(k) != saved.get(k))
        if diff:
            raise ConfigError(
                f"{self.out} holds a run with a different config ({', '.join(diff)} differ); "
                "use another --out, or --force to start over"
            )

    def maybe_resume(self) -> bool:
        """Resume from ``checkpoint-last.pt`` when present; returns True if it did."""
        path = self.out / LAST
        if self.force or not path.exists():
            return False
        state = load_checkpoint(path, map_location=self.device)
        self._check_same_run(state.get("config", {}))
        load_state_dict_into(self.module, state["model"], source=str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.defense.load_state_dict(state.get("defense_state", {}))
        self.averages.load_state_dict(state.get("extra_models", {}))
        self.perm_gen.set_state(state["perm_gen"].cpu())
        self.aug_gen.set_state(state["aug_gen"].cpu())
        self.attack_gen.set_state(state["attack_gen"].to(self.attack_gen.get_state().device))
        self.history = list(state["history"])
        self.best_score = float(state["best_score"])
        self.start_epoch = int(state["epoch"])
        self.partial = state.get("partial")
        where = (f"epoch {self.start_epoch + 1}, batch {self.partial['batches_done']}" if self.partial
                 else f"the end of epoch {self.start_epoch}")
        log.info("resuming %s from %s (of %d epochs)", self.out, where, self.cfg.epochs)
        return True

    def _save_last(self, partial: dict[str, Any] | None = None) -> None:
        if self.dist.main:
            save_checkpoint(self.out / LAST, self._state(partial))
        barrier(self.dist)

    def _checkpoint_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """End of epoch: ``checkpoint-best.pt`` if the selection score improved, then ``checkpoint-last.pt``."""
        score = record["select_score"]
        if score > self.best_score and self.dist.main:
            save_checkpoint(self.out / BEST, {
                "model": self.module.state_dict(), "epoch": epoch + 1, "score": score, "select": self.cfg.select,
                "extra_models": self.averages.state_dict(),
                "defense_state": self.defense.state_dict(), "config": self._resolved(), "meta": self._meta(),
            })
        self.best_score = max(self.best_score, score)
        self._save_last()

    # -- one epoch ----------------------------------------------------------------
    def _begin_epoch(self, epoch: int) -> float:
        """Set the epoch's learning rate and threat (a new one under eps warm-up), tell the defense; returns lr."""
        cfg = self.cfg
        lr = lr_at(epoch, cfg.lr, cfg.schedule, cfg.epochs, self.ctx.lr_milestones, cfg.gamma)
        self._set_lr(lr)
        self.ctx.threat = self.threat.with_eps(warmup_eps(self.threat.eps, epoch, self.eps_warmup))
        self.defense.on_epoch_start(epoch)
        return lr

    def _set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def _step(self, batch: Batch) -> bool:
        """One training step on ``batch``: attack + loss, backward, hooks, optimizer step, global statistics.

        Returns False when the batch was skipped for a non-finite loss
        (``--nan-policy skip-batch``); raises :class:`NonFiniteLossError` under ``stop``.
        """
        info, x, y = self.dist, batch.x, batch.y
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if info.enabled:  # the random starts are drawn for the global batch; this rank keeps its rows
            offset, n_local = shard(batch.n_global, info)
            sharding = self.sharded_gen.batch(batch.n_global, offset, n_local)
        else:
            sharding = contextlib.nullcontext()
        model = self.model if self.eager_model is None or len(x) == self.cfg.batch_size else self.eager_model
        with sharding, torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = batch.out = self.defense.training_step(model, x, y, batch.pos)
        # the step's one host read (and one collective under DDP): non-finite flag, loss and terms, summed over ranks
        terms = list(out.terms)
        finite = torch.isfinite(out.loss.detach()).all()
        if out.adv_logits is not None:
            finite = finite & torch.isfinite(out.adv_logits.detach()).all()
        status = torch.stack([(~finite).float(), out.loss.detach().float().reshape(()),
                              *(torch.as_tensor(out.terms[k], device=self.device).detach().float().reshape(())
                                for k in terms)])
        status[1:] *= len(y)
        status = all_reduce_sum(status, info).tolist()
        self.optimizer.zero_grad(set_to_none=True)
        if status[0] > 0:
            bad = _non_finite(out.loss, out.adv_logits) or "non-finite loss or logits on another rank"
            where = f"{bad} at epoch {batch.epoch + 1}, batch {batch.index + 1}"
            if self.cfg.nan_policy == "stop":
                saved = (f"; {self.out / LAST} holds the last good state" if (self.out / LAST).exists() else "")
                raise NonFiniteLossError(f"{where}{saved}; rerun with --nan-policy skip-batch to skip such "
                                         "batches, or lower the learning rate")
            log.warning("%s: batch skipped (--nan-policy skip-batch)", where)
            return False
        scale = len(y) * info.world / batch.n_global  # makes DDP's gradient average the global-batch mean
        (out.loss * scale if info.enabled else out.loss).backward()
        for hook in self.hooks:
            hook.before_optimizer_step(self, batch)
        self.optimizer.step()
        for hook in self.hooks:
            hook.after_optimizer_step(self, batch)
        adv_logits = out.adv_logits.detach() if out.adv_logits is not None else None
        if info.enabled:
            batch.y_all = gather_rows(y, info)
            batch.adv_all = gather_rows(adv_logits.float(), info) if adv_logits is not None else None
        else:
            batch.y_all, batch.adv_all = y, adv_logits
        batch.loss = status[1] / batch.n_global
        batch.terms = {k: status[2 + i] / batch.n_global for i, k in enumerate(terms)}
        self.defense.on_batch_end(batch.y_all, batch.adv_all)
        return True

    def _epoch_batches(self, epoch: int, done: int) -> tuple[Iterator, int]:
        """This epoch's global batches from batch ``done`` on (the defense's order or a uniform shuffle)."""
        cfg, bundle = self.cfg, self.bundle
        order = self.defense.sample_order(epoch, bundle.train.y, self.perm_gen)
        if order is None:
            order = torch.randperm(len(bundle.train), generator=self.perm_gen)
        batches = iterate_batches(bundle.train, cfg.batch_size, device=self.device, generator=self.aug_gen,
                                  augment=bundle.augment, order=order[done * cfg.batch_size:])
        return batches, -(-len(order) // cfg.batch_size)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (resuming mid-epoch if ``self.partial`` says so); returns its training statistics."""
        cfg, info = self.cfg, self.dist
        lr = self._begin_epoch(epoch)
        acc = EpochAccumulator(self.bundle.num_classes, self.device)
        partial, self.partial = self.partial, None
        if partial is not None:  # resume inside this epoch: same order, skip the batches already done
            self.perm_gen.set_state(partial["perm_state"].cpu())
            acc.load_state_dict(partial["acc"])
        perm_state = self.perm_gen.get_state()
        done = partial["batches_done"] if partial else 0
        skipped = partial["skipped"] if partial else 0
        batches, n_batches = self._epoch_batches(epoch, done)
        bar = tqdm(batches, total=n_batches, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=self.quiet or not sys.stderr.isatty(), unit="batch")
        log_every = 0.0 if self.quiet or not bar.disable else PROGRESS_EVERY_S  # off a TTY: a log line every 30 s
        t_start = t_last = time.time()
        for i, (x, y, pos) in enumerate(bar, start=done):
            n_global = len(y)
            if info.enabled:
                offset, n_local = shard(n_global, info)
                x, y, pos = x[offset:offset + n_local], y[offset:offset + n_local], pos[offset:offset + n_local]
            batch = Batch(epoch, i, x, y, pos, n_global)
            if cfg.lr_warmup_iters:
                self._set_lr(lr * warmup_factor(epoch * n_batches + i, cfg.lr_warmup_iters))
            if self._step(batch):
                acc.add(batch.y_all, batch.adv_all, batch.loss, batch.terms)
                bar.set_postfix(loss=f"{batch.loss:.3f}", refresh=False)
            else:
                skipped += 1
            batches_done = i + 1
            if log_every and (now := time.time()) - t_last >= log_every and batches_done < n_batches:
                rate = (batches_done - done) / (now - t_start)
                log.info("epoch %d/%d: batch %d/%d (%.0f%%), loss %.4f, %.2f batches/s, epoch ETA %s", epoch + 1,
                         cfg.epochs, batches_done, n_batches, 100 * batches_done / n_batches, batch.loss, rate,
                         format_duration((n_batches - batches_done) / rate))
                t_last = now
            stop = any_rank(self._signal is not None, info, self.device)
            if stop or (cfg.checkpoint_every and batches_done % cfg.checkpoint_every == 0 and batches_done < n_batches):
                self._save_last({"epoch": epoch, "batches_done": batches_done, "perm_state": perm_state,
                                 "acc": acc.state_dict(), "skipped": skipped})
            if stop:
                sig = self._signal or signal.SIGTERM
                raise Interrupted(
                    f"stopped by {signal.Signals(sig).name} at epoch {epoch + 1}, batch {batches_done}; "
                    f"state saved in {self.out / LAST}. Resume by running the same command again.", int(sig))
        stats = acc.summary()
        stats.update(lr=lr, skipped_batches=skipped)
        return stats

    def _validate(self, epoch: int) -> tuple[list[float], list[float]]:
        """Per-class clean and PGD accuracy on the validation split, at the run's full (un-warmed) threat."""
        model = self.defense.inference_model(self.module)
        model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 10_000 + epoch)
        t = self.threat
        return validation_accuracy(model, self.bundle.val, eps=t.eps, alpha=t.alpha, steps=self.cfg.val_steps,
                                  norm=t.norm, device=self.device, generator=gen, autocast_dtype=self.amp,
                                  channels_last=self.channels_last)

    def _record_epoch(self, epoch: int, train_stats: dict[str, Any], val_clean: list[float], val_rob: list[float],
                      seconds: float) -> dict[str, Any]:
        """The one place an epoch is recorded: the defense's epoch hook, the history, ``log.jsonl`` and the log line.

        Returns the record appended to the history (and written as one line of
        ``log.jsonl`` by rank 0).  Anything that reports per-epoch results
        (an experiment logger) belongs here, after the record is complete.
        """
        stats = EpochStats(epoch=epoch, train_pred_counts=train_stats["pred_counts"],
                           train_robust_acc=train_stats["robust_acc"], train_adv_probs=train_stats["adv_probs"],
                           val_clean_acc=val_clean, val_robust_acc=val_rob, model=self.module)
        extra = self.defense.on_epoch_end(stats) or {}
        record = {
            "epoch": epoch + 1, "lr": train_stats["lr"], "loss": train_stats["loss"], "terms": train_stats["terms"],
            "train_robust_acc": train_stats["robust_acc"], "val_clean_acc": val_clean, "val_robust_acc": val_rob,
            "val_clean_mean": nan_mean(val_clean), "val_robust_mean": nan_mean(val_rob),
            "val_robust_worst": nan_min(val_rob), "select_score": selection_score(val_rob, self.cfg.select),
            "skipped_batches": train_stats["skipped_batches"], "defense": extra, "seconds": seconds,
        }
        self.history.append(record)
        if self.dist.main:
            atomic_write_text(self.out / LOG, "".join(_json_line(r) for r in self.history))
        log.info("epoch %d/%d  loss %.4f  val clean %.3f  val robust %.3f (worst class %.3f)  %.1fs%s",
                 epoch + 1, self.cfg.epochs, record["loss"], record["val_clean_mean"], record["val_robust_mean"],
                 record["val_robust_worst"], record["seconds"],
                 "".join(f"  {k} {v:.4f}" for k, v in record["terms"].items()))
        self.loggers.log_epoch(record)  # TensorBoard / MLflow / W&B (rank 0; step = epoch)
        return record

    # -- the run ------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM set a flag; the loop saves a resumable state at the next batch end and stops."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        def handler(signum, frame):
            if self._signal is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self._signal = signum
            log.warning("received %s: finishing this batch, saving state, then stopping", signal.Signals(signum).name)
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def fit(self) -> Path:
        with self._signals():
            return self._fit()

    def _already_done(self) -> bool:
        """True if ``out`` holds this run, finished (and not ``--force``)."""
        if not (self.out / SUMMARY).exists() or self.force:
            return False
        saved = load_checkpoint(self.out / LAST) if (self.out / LAST).exists() else {}
        if saved.get("epoch") != self.cfg.epochs:
            return False
        self._check_same_run(saved.get("config", {}))
        log.info("%s is already trained (%d epochs); nothing to do (use --force to retrain)", self.out, self.cfg.epochs)
        return True

    def _fit(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.main and (stale := remove_stale_temps(self.out)):
            log.info("removed %d temporary file(s) left in %s by an interrupted write", len(stale), self.out)
        if self._already_done():
            return self.out
        self.maybe_resume()
        if self.dist.main:
            atomic_write_text(self.out / CONFIG, dump_yaml(self.cfg))
        log.info("training %s with %s on %s (%d train / %d val images, %d classes) on %s; output in %s",
                 self.cfg.model, self.cfg.defense, self.bundle.name, len(self.bundle.train), len(self.bundle.val),
                 self.bundle.num_classes, self.device, self.out)
        t_start = time.time()
        self.defense.on_train_start(self.module)
        for epoch in range(self.start_epoch, self.cfg.epochs):
            t0 = time.time()
            train_stats = self._train_epoch(epoch)
            val_clean, val_rob = self._validate(epoch)
            record = self._record_epoch(epoch, train_stats, val_clean, val_rob, seconds=time.time() - t0)
            self._checkpoint_epoch(epoch, record)
            if epoch + 1 < self.cfg.epochs and any_rank(self._signal is not None, self.dist, self.device):
                sig = self._signal or signal.SIGTERM  # arrived during validation: the epoch-end state is saved
                raise Interrupted(f"stopped by {signal.Signals(sig).name} at the end of epoch {epoch + 1}; state saved "
                                  f"in {self.out / LAST}. Resume by running the same command again.", int(sig))
        if self.dist.main:
            self._write_summary(time.time() - t_start)
        return self.out

    def _write_summary(self, wall_seconds: float) -> None:
        best = max(self.history, key=lambda r: r["select_score"])
        atomic_write_json(self.out / SUMMARY, summary := {
            "epochs": self.cfg.epochs, "best_epoch": best["epoch"], "select": self.cfg.select,
            "best_score": best["select_score"], "wall_seconds_this_session": wall_seconds,
            "train_seconds_total": sum(r["seconds"] for r in self.history), "device": str(self.device),
            "host": platform.node(), "torch": torch.__version__, "seeds": self.seeds,
            "dataset": self.bundle.name, "train_counts": self.bundle.train_counts, "notes": self.bundle.notes,
            "world_size": self.dist.world,
            "precision": {"autocast": str(self.amp).replace("torch.", "") if self.amp else "off",
                          "channels_last": self.channels_last, "compile": self.cfg.compile},
            "last": {k: self.history[-1][k] for k in ("val_clean_mean", "val_robust_mean", "val_robust_worst")},
        })
        self.loggers.finish(summary, self.history)  # the summary and the final per-class tables


def _non_finite(loss: torch.Tensor, logits: torch.Tensor | None) -> str:
    """"NaN loss", "Inf logits", ... for a non-finite loss or logits, else ""."""
    for name, t in (("loss", loss), ("logits", logits)):
        if t is not None and not torch.isfinite(t).all():
            return f"{'NaN' if torch.isnan(t).any() else 'Inf'} {name}"
    return ""


def _json_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record) + "\n"


def train(cfg: TrainConfig, quiet: bool = False, force: bool = False) -> Path:
    """Train ``cfg`` into ``cfg.out`` (resuming if a checkpoint is there); returns the run directory."""
    return Trainer(cfg, quiet=quiet, force=force).fit()


__all__ = ["Trainer", "TrainConfig", "TrainHook", "Batch", "train", "NonFiniteLossError"]
