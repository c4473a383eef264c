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

from rfbench.benchmark.data import iterate_batches
from rfbench.benchmark.eval.progress import DEFAULT_EVERY_S as PROGRESS_EVERY_S
from rfbench.benchmark.eval.progress import format_duration
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.data import images_on_device, load_bundle, threat_from
from rfbench.benchmark.train.distributed import (
    ShardedGenerator,
    all_reduce_sum,
    any_rank,
    barrier,
    gather_rows,
    init_distributed,
    shard,
)
from rfbench.benchmark.train.hooks import Batch, TrainHook, training_hooks
from rfbench.benchmark.train.loggers import ExperimentLoggers, check_available
from rfbench.benchmark.train.model import build_model, build_optimizer
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
from rfbench.benchmark.train.statistics import EpochAccumulator, selection_score
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
from rfbench.core.perclass import nan_mean, nan_min
from rfbench.core.threat import warmup_eps
from rfbench.defenses import EpochStats, TrainContext, build_defense
from rfbench.defenses.base import Defense, LossOutput
from rfbench.models.averaging import WeightAverages

log = logging.getLogger(__name__)

LAST, BEST, CONFIG, LOG, SUMMARY = "checkpoint-last.pt", "checkpoint-best.pt", "config.yaml", "log.jsonl", "summary.json"
# config keys that may differ between a run and its resumption
RESUMABLE_KEYS = {"out", "device", "epochs", "checkpoint_every", "nan_policy", "compile", "logger"}


class NonFiniteLossError(RfbenchError):
    """Training produced NaN or Inf."""


class TrainingOutOfMemory(RfbenchError):
    """Training ran out of device or CPU memory; the message says where, what is saved, and the flag to lower."""


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
        self.cfg, self.out, self.force = cfg, Path(cfg.out), force
        self._setup_runtime(quiet)  # logger packages, process group, device, precision, seeds
        self._setup_data()  # dataset and splits, images on the device, the training threat
        self._setup_defense()  # random streams, the defense's context, the defense and its training hooks
        self._setup_model()  # model (defense's head, memory layout, init weights), averages, optimizer, wrappers
        self._setup_records()  # history, resume point, signals, experiment loggers

    # -- setup, in this order: the order of the seeded draws is part of every run's arithmetic ----------
    def _setup_runtime(self, quiet: bool) -> None:
        cfg = self.cfg
        for name in cfg.logger:  # a missing logger package is reported before the data is loaded
            check_available(name)
        self.dist, self.device = init_distributed(resolve_device(cfg.device))
        self.threads = apply_cpu_threads(self.device)  # logged when training starts, after every input is checked
        self.quiet = quiet or not self.dist.main
        if not self.dist.main:  # one voice: rank 0 logs, the others only warn
            logging.getLogger().setLevel(logging.WARNING)
        self.amp = autocast_dtype(cfg.amp, self.device)
        self.seeds = seed_everything(cfg.seed)

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.bundle = load_bundle(cfg)
        if self.device.type == "cuda":  # uint8 images held on the GPU: no host-to-device image copy per batch
            self.bundle.train = images_on_device(self.bundle.train, self.device)
            self.bundle.val = images_on_device(self.bundle.val, self.device)
        self.threat = threat_from(cfg, self.bundle)  # the resolved training threat (immutable)
        self.eps_warmup = (cfg.eps_warmup_epochs if cfg.eps_warmup_epochs is not None
                           else self.bundle.threat.eps_warmup_epochs)

    def _setup_defense(self) -> None:
        cfg = self.cfg
        # independent streams: epoch order, augmentation, attack starts (each saved for exact resume)
        self.perm_gen = torch.Generator().manual_seed(cfg.seed)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.attack_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.sharded_gen = ShardedGenerator(self.attack_gen) if self.dist.distributed else None
        self.averages = WeightAverages()
        self.ctx = TrainContext(
            num_classes=self.bundle.num_classes, train_counts=self.bundle.train_counts, threat=self.threat,
            epochs=cfg.epochs, device=self.device, autocast_dtype=self.amp,
            generator=self.sharded_gen or self.attack_gen,
            val_loader=lambda bs=512: iterate_batches(self.bundle.val, bs, device=self.device),
            lr_milestones=resolve_milestones(cfg.milestones, cfg.milestone_fractions, cfg.epochs), averages=self.averages,
            fidelity=cfg.fidelity,
        )
        self.defense: Defense = build_defense(cfg.defense, cfg.defense_args, self.ctx)
        self.hooks: list[TrainHook] = training_hooks(cfg, self.defense)  # extension points of the step (TrainHook)

    def _setup_model(self) -> None:
        cfg = self.cfg
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
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        # compiled, one process: a batch of another size (an epoch's last, partial one) runs eager, since
        # a new size would compile the attack and training graphs again, dynamic-shaped (slower than the
        # one eager batch they serve).  Under DDP every rank must go through its wrapper: no fallback.
        self.eager_model = self.module if cfg.compile and not self.dist.distributed else None

    def _setup_records(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.best_score = float("-inf")
        self.start_epoch = 0
        self.partial: dict[str, Any] | None = None  # mid-epoch state to resume from
        self._signal: int | None = None
        # experiment loggers (rank 0 only); a missing package fails here, before any training
        self.loggers = ExperimentLoggers(self.cfg.logger if self.dist.main else [], self.out,
                                         classes=list(self.bundle.classes), config=self._resolved())

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
        if info.distributed:  # the random starts are drawn for the global batch; this rank keeps its rows
            offset, n_local = shard(batch.n_global, info)
            sharding = self.sharded_gen.batch(batch.n_global, offset, n_local)
        else:
            sharding = contextlib.nullcontext()
        model = self.model if self.eager_model is None or len(x) == self.cfg.batch_size else self.eager_model
        with sharding, torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = batch.out = self._training_step(model, batch, x, y)
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
            for hook in self.hooks:
                hook.step_skipped(self, batch)
            return False
        scale = len(y) * info.world / batch.n_global  # makes DDP's gradient average the global-batch mean
        (out.loss * scale if info.distributed else out.loss).backward()
        for hook in self.hooks:
            hook.before_optimizer_step(self, batch)
        self.optimizer.step()
        for hook in self.hooks:
            hook.after_optimizer_step(self, batch)
        adv_logits = out.adv_logits.detach() if out.adv_logits is not None else None
        if info.distributed:
            batch.y_all = gather_rows(y, info)
            batch.adv_all = gather_rows(adv_logits.float(), info) if adv_logits is not None else None
        else:
            batch.y_all, batch.adv_all = y, adv_logits
        batch.loss = status[1] / batch.n_global
        batch.terms = {k: status[2 + i] / batch.n_global for i, k in enumerate(terms)}
        self.defense.on_batch_end(batch.y_all, batch.adv_all)
        return True

    def _training_step(self, model: nn.Module, batch: Batch, x: torch.Tensor, y: torch.Tensor) -> LossOutput:
        """The defense's step; with hooks, its inner maximisation and its loss with ``before_loss`` between.

        A defense with its own ``training_step`` cannot be split: its hooks' ``before_loss`` sees ``x_adv=None``.
        """
        d = self.defense
        if not self.hooks:
            return d.training_step(model, x, y, batch.pos)
        if d.has_own_training_step():
            for hook in self.hooks:
                hook.before_loss(self, batch, model, x, y, None)
            return d.training_step(model, x, y, batch.pos)
        x_adv = d.perturb(model, x, y)
        for hook in self.hooks:
            hook.before_loss(self, batch, model, x, y, x_adv)
        model.train()
        return d.loss(model, x, y, x_adv)

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
        t_start = t_last = time.monotonic()
        for i, (x, y, pos) in enumerate(bar, start=done):
            n_global = len(y)
            if info.distributed:
                offset, n_local = shard(n_global, info)
                x, y, pos = x[offset:offset + n_local], y[offset:offset + n_local], pos[offset:offset + n_local]
            batch = Batch(epoch, i, x, y, pos, n_global)
            self._where = f"at epoch {epoch + 1}, batch {i + 1}"
            if cfg.lr_warmup_iters:
                self._set_lr(lr * warmup_factor(epoch * n_batches + i, cfg.lr_warmup_iters))
            if self._step(batch):
                acc.add(batch.y_all, batch.adv_all, batch.loss, batch.terms)
                bar.set_postfix(loss=f"{batch.loss:.3f}", refresh=False)
            else:
                skipped += 1
            batches_done = i + 1
            if log_every and (now := time.monotonic()) - t_last >= log_every and batches_done < n_batches:
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
            "cpu_threads": self.threads.threads if self.threads is not None else None,
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
        self._where = "before the first batch"  # where training is, for an out-of-memory message
        with self._signals():
            try:
                return self._fit()
            except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
                from rfbench.benchmark.eval.harness import is_out_of_memory

                if not is_out_of_memory(exc):
                    raise
                raise self._out_of_memory(exc) from None

    def _out_of_memory(self, exc: BaseException) -> TrainingOutOfMemory:
        """One line for running out of memory: where, what the last save holds, and the flag to lower.

        Training never halves its batch to carry on (the evaluation does): the batch size is part
        of a run's arithmetic, so a smaller batch would give another result than the config says.
        A run cannot resume at another batch size either, hence the two ways out.
        """
        from rfbench.benchmark.eval.harness import out_of_memory_text

        lower = f"lower --batch-size (now {self.cfg.batch_size}; train.batch_size=N in a run config)"
        if (self.out / LAST).exists():
            way_out = (f"{self.out / LAST} holds the last saved state: free memory on the device and run the same "
                       f"command again to resume from it, or {lower} and start over with another --out or --force")
        else:
            way_out = f"nothing was saved yet; {lower}, or free memory on the device"
        return TrainingOutOfMemory(f"out of memory {self._where} ({out_of_memory_text(exc)}); {way_out}")

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
        if (threads := self.threads) is not None:
            log.info("CPU threads: %d (%s; %d cores%s)", threads.threads, threads.rule, threads.cores,
                     "" if threads.others is None else f", {threads.others:g} other processes running")
        self.maybe_resume()
        if self.dist.main:
            atomic_write_text(self.out / CONFIG, dump_yaml(self.cfg))
        log.info("training %s with %s on %s (%d train / %d val images, %d classes) on %s; output in %s",
                 self.cfg.model, self.cfg.defense, self.bundle.name, len(self.bundle.train), len(self.bundle.val),
                 self.bundle.num_classes, self.device, self.out)
        t_start = time.monotonic()
        self.defense.on_train_start(self.module)
        for epoch in range(self.start_epoch, self.cfg.epochs):
            t0 = time.monotonic()
            train_stats = self._train_epoch(epoch)
            self._where = f"in the validation of epoch {epoch + 1}"
            val_clean, val_rob = self._validate(epoch)
            record = self._record_epoch(epoch, train_stats, val_clean, val_rob, seconds=time.monotonic() - t0)
            self._checkpoint_epoch(epoch, record)
            if epoch + 1 < self.cfg.epochs and any_rank(self._signal is not None, self.dist, self.device):
                sig = self._signal or signal.SIGTERM  # arrived during validation: the epoch-end state is saved
                raise Interrupted(f"stopped by {signal.Signals(sig).name} at the end of epoch {epoch + 1}; state saved "
                                  f"in {self.out / LAST}. Resume by running the same command again.", int(sig))
        if self.dist.main:
            self._write_summary(time.monotonic() - t_start)
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
            # the intra-op thread counts the epochs trained with (a resumed run may have had another)
            "cpu_threads": sorted({r["cpu_threads"] for r in self.history if r.get("cpu_threads") is not None}),
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


__all__ = ["Trainer", "TrainConfig", "TrainHook", "Batch", "train", "NonFiniteLossError", "TrainingOutOfMemory"]
