"""The trainer every defense plugs into.

One loop for all defenses (see :mod:`defenses.base` for the hooks it calls).
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

import dataclasses
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark.config import dump_yaml, to_dict
from benchmark.data import DataBundle, iterate_batches, load_dataset
from benchmark.data.subsets import stratified_subset
from benchmark.errors import ConfigError, RfbenchError
from benchmark.io import atomic_write_json, atomic_write_text, load_checkpoint, load_state_dict_into, save_checkpoint
from benchmark.models import create_model
from benchmark.train.config import TrainConfig
from benchmark.train.runtime import autocast_dtype, resolve_device, seed_everything, use_channels_last
from benchmark.train.schedule import lr_at
from benchmark.train.validate import per_class_accuracy
from defenses import EpochStats, ThreatModel, TrainContext, build_defense
from defenses.base import Defense

log = logging.getLogger(__name__)

LAST, BEST, CONFIG, LOG, SUMMARY = "checkpoint-last.pt", "checkpoint-best.pt", "config.yaml", "log.jsonl", "summary.json"
# config keys that may differ between a run and its resumption
RESUMABLE_KEYS = {"out", "device", "epochs"}


class NonFiniteLossError(RfbenchError):
    """Training produced NaN or Inf."""


def threat_from(cfg: TrainConfig, bundle: DataBundle) -> ThreatModel:
    """The training threat model: the config's values, else the dataset's protocol defaults."""
    d = bundle.threat
    return ThreatModel(
        norm=cfg.norm or d.norm,
        eps=cfg.eps if cfg.eps is not None else d.eps,
        alpha=cfg.alpha if cfg.alpha is not None else d.train_alpha,
        steps=cfg.steps if cfg.steps is not None else d.train_steps,
    )


def load_bundle(cfg: TrainConfig) -> DataBundle:
    """The run's data: dataset, long-tail split, validation split, optional training subset."""
    bundle = load_dataset(cfg.dataset, root=cfg.data_root, download=cfg.download,
                          imbalance_ratio=cfg.imbalance_ratio, val_per_class=cfg.val_per_class, seed=cfg.seed)
    if cfg.max_train_samples:
        bundle.train = stratified_subset(bundle.train, cfg.max_train_samples, seed=cfg.seed)
        bundle.notes.append(f"training subset: {len(bundle.train)} images (max_train_samples={cfg.max_train_samples})")
    return bundle


def build_model(cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
    """The registered model, sized for the dataset, with the dataset's normalisation inside."""
    return create_model(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        mean=bundle.mean, std=bundle.std, **cfg.model_kwargs)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def selection_score(val_robust: list[float], rule: str) -> float:
    """Checkpoint-selection metric on per-class validation robust accuracy."""
    mean, worst = sum(val_robust) / len(val_robust), min(val_robust)
    return {"mean": mean, "worst": worst, "mean+worst": mean + worst}[rule]


class EpochAccumulator:
    """Per-class statistics of the training adversarial examples over one epoch."""

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
    def add(self, y: torch.Tensor, logits: torch.Tensor | None, loss: float, terms: dict[str, torch.Tensor]) -> None:
        self.batches += 1
        self.loss_sum += loss
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + float(v)
        c = self.seen.numel()
        self.seen += torch.bincount(y, minlength=c)
        if logits is None:
            return
        logits = logits.detach().float()
        pred = logits.argmax(1)
        self.pred_counts += torch.bincount(pred, minlength=c)
        self.correct += torch.bincount(y[pred == y], minlength=c)
        self.prob_sum.index_add_(0, y, logits.softmax(1).double())

    def summary(self) -> dict[str, Any]:
        seen = self.seen.clamp(min=1)
        return {
            "pred_counts": self.pred_counts.tolist(),
            "robust_acc": (self.correct / seen).tolist(),
            "adv_probs": (self.prob_sum / seen[:, None]).tolist(),
            "loss": self.loss_sum / max(1, self.batches),
            "terms": {k: v / max(1, self.batches) for k, v in self.terms.items()},
        }


class Trainer:
    """Trains one run described by a :class:`TrainConfig` into ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, quiet: bool = False, force: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.quiet = quiet
        self.force = force
        self.device = resolve_device(cfg.device)
        self.amp = autocast_dtype(cfg.amp, self.device)
        self.channels_last = use_channels_last(cfg.channels_last, self.device)
        self.seeds = seed_everything(cfg.seed)
        self.bundle = load_bundle(cfg)
        self.threat = threat_from(cfg, self.bundle)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.attack_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        ctx = TrainContext(
            num_classes=self.bundle.num_classes, train_counts=self.bundle.train_counts, threat=self.threat,
            epochs=cfg.epochs, device=self.device, autocast_dtype=self.amp, generator=self.attack_gen,
            val_loader=lambda bs=512: iterate_batches(self.bundle.val, bs, device=self.device),
            lr_milestones=list(cfg.milestones),
        )
        self.defense: Defense = build_defense(cfg.defense, cfg.defense_args, ctx)
        model = self.defense.setup_model(build_model(cfg, self.bundle)).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.init:
            load_state_dict_into(model, load_checkpoint(cfg.init), source=f"init checkpoint {cfg.init}")
            log.info("initialised weights from %s", cfg.init)
        self.model = model
        self.optimizer = build_optimizer(cfg, model)
        self.history: list[dict[str, Any]] = []
        self.best_score = float("-inf")
        self.start_epoch = 0

    # -- checkpoints ------------------------------------------------------------
    def _resolved(self) -> dict[str, Any]:
        return to_dict(self.cfg)

    def _meta(self) -> dict[str, Any]:
        """What rebuilding the model needs without loading the dataset."""
        b = self.bundle
        return {"dataset": b.name, "num_classes": b.num_classes, "in_channels": b.in_channels,
                "image_size": list(b.image_size), "mean": list(b.mean), "std": list(b.std),
                "classes": list(b.classes), "train_counts": b.train_counts,
                "threat": dataclasses.asdict(self.threat), "imbalance_ratio": b.imbalance_ratio}

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": len(self.history),
            "defense_state": self.defense.state_dict(),
            "extra_models": {k: m.state_dict() for k, m in self.defense.extra_models().items()},
            "data_gen": self.data_gen.get_state(),
            "attack_gen": self.attack_gen.get_state(),
            "history": self.history,
            "best_score": self.best_score,
            "config": self._resolved(),
            "meta": self._meta(),
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
        load_state_dict_into(self.model, state["model"], source=str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.defense.load_state_dict(state.get("defense_state", {}))
        for name, m in self.defense.extra_models().items():
            if name in state.get("extra_models", {}):
                m.load_state_dict(state["extra_models"][name])
        self.data_gen.set_state(state["data_gen"].cpu())
        self.attack_gen.set_state(state["attack_gen"].cpu())
        self.history = list(state["history"])
        self.best_score = float(state["best_score"])
        self.start_epoch = int(state["epoch"])
        log.info("resuming %s after epoch %d of %d", self.out, self.start_epoch, self.cfg.epochs)
        return True

    # -- one epoch ----------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, bundle = self.cfg, self.bundle
        lr = lr_at(epoch, cfg.lr, cfg.schedule, cfg.epochs, cfg.milestones, cfg.gamma)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.defense.on_epoch_start(epoch)
        order = self.defense.sample_order(epoch, bundle.train.y, self.data_gen)
        acc = EpochAccumulator(bundle.num_classes, self.device)
        batches = iterate_batches(bundle.train, cfg.batch_size, device=self.device, shuffle=True,
                                  generator=self.data_gen, augment=bundle.augment, order=order)
        n_batches = -(-len(order if order is not None else bundle.train) // cfg.batch_size)
        bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=self.quiet or not sys.stderr.isatty(), unit="batch")
        skipped = 0
        for i, (x, y, pos) in enumerate(bar):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                out = self.defense.training_step(self.model, x, y, pos)
            bad = not torch.isfinite(out.loss) or (out.adv_logits is not None and not torch.isfinite(out.adv_logits).all())
            if bad:
                where = f"non-finite loss or logits at epoch {epoch + 1}, batch {i + 1}"
                if cfg.nan_policy == "stop":
                    raise NonFiniteLossError(f"{where}; lower the learning rate, or rerun with --nan-policy skip-batch")
                log.warning("%s: batch skipped (--nan-policy skip-batch)", where)
                skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                continue
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            self.defense.on_batch_end(y, out.adv_logits)
            loss = float(out.loss.detach())
            acc.add(y, out.adv_logits, loss, {k: v.detach() for k, v in out.terms.items()})
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        stats = acc.summary()
        stats.update(lr=lr, skipped_batches=skipped)
        return stats

    def _validate(self, epoch: int) -> tuple[list[float], list[float]]:
        model = self.defense.inference_model(self.model)
        model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 10_000 + epoch)
        t = self.threat
        return per_class_accuracy(model, self.bundle.val, eps=t.eps, alpha=t.alpha, steps=self.cfg.val_steps,
                                  norm=t.norm, device=self.device, generator=gen, autocast_dtype=self.amp)

    # -- the run ------------------------------------------------------------------
    def fit(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        if (self.out / SUMMARY).exists() and not self.force:
            saved = load_checkpoint(self.out / LAST) if (self.out / LAST).exists() else {}
            if saved.get("epoch") == self.cfg.epochs:
                self._check_same_run(saved.get("config", {}))
                log.info("%s is already trained (%d epochs); nothing to do (use --force to retrain)", self.out, self.cfg.epochs)
                return self.out
        self.maybe_resume()
        atomic_write_text(self.out / CONFIG, dump_yaml(self.cfg))
        log.info("training %s with %s on %s (%d train / %d val images, %d classes) on %s; output in %s",
                 self.cfg.model, self.cfg.defense, self.bundle.name, len(self.bundle.train), len(self.bundle.val),
                 self.bundle.num_classes, self.device, self.out)
        t_start = time.time()
        for epoch in range(self.start_epoch, self.cfg.epochs):
            t0 = time.time()
            train_stats = self._train_epoch(epoch)
            val_clean, val_rob = self._validate(epoch)
            stats = EpochStats(epoch=epoch, train_pred_counts=train_stats["pred_counts"],
                               train_robust_acc=train_stats["robust_acc"], train_adv_probs=train_stats["adv_probs"],
                               val_clean_acc=val_clean, val_robust_acc=val_rob, model=self.model)
            extra = self.defense.on_epoch_end(stats) or {}
            score = selection_score(val_rob, self.cfg.select)
            record = {
                "epoch": epoch + 1, "lr": train_stats["lr"], "loss": train_stats["loss"], "terms": train_stats["terms"],
                "train_robust_acc": train_stats["robust_acc"], "val_clean_acc": val_clean, "val_robust_acc": val_rob,
                "val_clean_mean": sum(val_clean) / len(val_clean), "val_robust_mean": sum(val_rob) / len(val_rob),
                "val_robust_worst": min(val_rob), "select_score": score, "skipped_batches": train_stats["skipped_batches"],
                "defense": extra, "seconds": time.time() - t0,
            }
            self.history.append(record)
            if score > self.best_score:
                self.best_score = score
                save_checkpoint(self.out / BEST, {
                    "model": self.model.state_dict(), "epoch": epoch + 1, "score": score, "select": self.cfg.select,
                    "extra_models": {k: m.state_dict() for k, m in self.defense.extra_models().items()},
                    "defense_state": self.defense.state_dict(), "config": self._resolved(), "meta": self._meta(),
                })
            save_checkpoint(self.out / LAST, self._state())
            atomic_write_text(self.out / LOG, "".join(_json_line(r) for r in self.history))
            log.info("epoch %d/%d  loss %.4f  val clean %.3f  val robust %.3f (worst class %.3f)  %.1fs%s",
                     epoch + 1, self.cfg.epochs, record["loss"], record["val_clean_mean"], record["val_robust_mean"],
                     record["val_robust_worst"], record["seconds"],
                     "".join(f"  {k} {v:.4f}" for k, v in record["terms"].items()))
        best = max(self.history, key=lambda r: r["select_score"])
        atomic_write_json(self.out / SUMMARY, {
            "epochs": self.cfg.epochs, "best_epoch": best["epoch"], "select": self.cfg.select,
            "best_score": best["select_score"], "wall_seconds_this_session": time.time() - t_start,
            "train_seconds_total": sum(r["seconds"] for r in self.history), "device": str(self.device),
            "host": platform.node(), "torch": torch.__version__, "seeds": self.seeds,
            "dataset": self.bundle.name, "train_counts": self.bundle.train_counts, "notes": self.bundle.notes,
            "last": {k: self.history[-1][k] for k in ("val_clean_mean", "val_robust_mean", "val_robust_worst")},
        })
        return self.out


def _json_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record) + "\n"


def train(cfg: TrainConfig, quiet: bool = False, force: bool = False) -> Path:
    """Train ``cfg`` into ``cfg.out`` (resuming if a checkpoint is there); returns the run directory."""
    return Trainer(cfg, quiet=quiet, force=force).fit()


__all__ = ["Trainer", "TrainConfig", "train", "NonFiniteLossError"]
