"""The per-class evaluation harness: clean pass, attacks per batch, resumable flag file, result.

Example::

    from rfbench.benchmark.eval import EvalConfig, evaluate
    result = evaluate(model, bundle, EvalConfig(attacks=["pgd:steps=20", "cw"], n_per_class=100), "runs/demo/eval")
    result.summary["worst_case"].worst      # an EvalResult: typed fields, and the file's keys as a mapping

The core is :func:`evaluate_data`: it works on tensors (an :class:`EvalData`: uint8
or float [0,1] images, labels, class names) and a :class:`~rfbench.core.threat.Threat`,
and writes files only when given an output directory.  :func:`evaluate` (what
``rfbench eval`` calls) is a thin layer that takes a dataset's test split and
protocol threat; ``rfbench.evaluate`` (:mod:`rfbench.benchmark.eval.api`) is the
tensor-level entry point.  Both run the same code below.

Before any attack, :func:`rfbench.benchmark.eval.model_checks.check_model` checks that
the model maps a batch to finite ``(batch, C)`` logits (an error otherwise) and
warns, in ``checks.model`` of the result, about probability outputs and
nondeterminism.  Per batch: clean predictions; every attack in order (cheap attacks on every
sample, then the cascade attacks such as AutoAttack on the points still
robust, unless ``autoattack_scope='all'``); each ``x_adv`` is checked to lie
in its eps-ball and in [0,1] (:class:`AttackBallError` otherwise); the
predictions on it are taken in float32; the flag file is rewritten
atomically.  Attack randomness is seeded per (seed, attack label, batch), so a
resumed evaluation equals an uninterrupted one.  Out of device memory, a batch
is redone in halves (again, once per halving) and the halving is logged and
recorded in the provenance.  Progress (running attack, images/s, ETA) is shown by
:class:`~rfbench.benchmark.eval.progress.EvalProgress`; an output directory is
created when the evaluation starts, and the flag file is written after every batch
(from the first finished one on).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rfbench.attacks.named import Attack
from rfbench.attacks.spec import DEFAULT_SUITE, build_attacks, sweep_base, t_sweep_specs
from rfbench.benchmark.data.base import ArrayDataset, DataBundle, to_float
from rfbench.benchmark.data.subsets import per_class_subset
from rfbench.benchmark.eval.assemble import build_result
from rfbench.benchmark.eval.checks import check_predictions, overall_verdict
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.eval.group import OUTPUT_FILES, file_sha256, finish_swap, staging_dir, swap_in  # noqa: F401 (staging_dir re-exported)
from rfbench.benchmark.eval.metrics import class_weight_norms
from rfbench.benchmark.eval.model_checks import check_model
from rfbench.benchmark.eval.progress import DEFAULT_EVERY_S, EvalProgress
from rfbench.benchmark.eval.provenance import dataset_description, portable_source, provenance, samples_digest
from rfbench.benchmark.eval.render import write_outputs
from rfbench.benchmark.eval.result import EvalResult
from rfbench.benchmark.eval.shard import Shard, batch_owners, merge_shard_flags
from rfbench.benchmark.train.runtime import (
    autocast_dtype,
    cached_channels_last,
    layout_message,
    resolve_device,
    use_channels_last,
)
from rfbench.benchmark.train.threads import apply_cpu_threads
from rfbench.core.config import choice, in_range
from rfbench.core.errors import RfbenchError
from rfbench.core.io.atomic import remove_stale_temps
from rfbench.core.threat import Threat, resolve_threat

log = logging.getLogger(__name__)

FLAGS_FILE = "flags.npz"
BALL_ATOL = 1e-6  # float32 rounding of x + δ − x
MODEL_CHECK_SAMPLES = 64  # clean test images the model checks run on


class AttackBallError(RfbenchError):
    """An attack returned a point outside its eps-ball or outside [0,1]."""


@dataclass
class EvalConfig:
    """Settings of one evaluation (``rfbench eval`` flags map onto these fields)."""

    attacks: list[Any] = field(default_factory=list)  # specs (strings or mappings); empty = DEFAULT_SUITE
    eps: float | None = field(default=None, metadata=in_range(0, None))  # None = the dataset's protocol eps
    norm: str | None = field(default=None, metadata=choice("linf", "l2"))
    t_sweep: list[float] = field(default_factory=list)  # adds temperature-pgd:T=t for each t
    n_per_class: int | None = field(default=None, metadata=in_range(1, None))  # stratified, deterministic subset
    subset_seed: int = field(default=0, metadata=in_range(0, 2**63 - 1))  # seed of that subset (independent of the attack seed)
    batch_size: int = field(default=256, metadata=in_range(1, None))
    device: str = "auto"
    seed: int = field(default=0, metadata=in_range(0, 2**63 - 1))  # attack randomness (random starts, AutoAttack)
    autoattack_scope: str = field(default="survivors", metadata=choice("survivors", "all"))
    amp: str = field(default="off", metadata=choice("off", "bf16"))  # autocast of attack steps; predictions stay fp32
    channels_last: str = field(default="auto", metadata=choice("auto", "on", "off"))
    plot: bool = False
    quiet: bool = False
    progress_every: float = field(default=DEFAULT_EVERY_S, metadata=in_range(0, None))  # s between log lines off a TTY (0 = off)
    overwrite: bool = False  # discard an existing flag file of a different evaluation


@dataclass
class EvalData:
    """The evaluated samples: images, labels, their positions in the original set, and the class names.

    ``x`` is ``N×C×H×W``, either uint8 (scaled to [0,1] per batch, as the datasets
    store images) or floating point already in [0,1] (kept as given, in float32).
    It has the interface of :class:`~rfbench.benchmark.data.base.ArrayDataset` that
    the subset functions use (``y``, ``num_classes``, ``subset``, ``index``).
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise RfbenchError(f"images must be N×C×H×W, got shape {tuple(self.x.shape)}")
        if self.x.dtype != torch.uint8:
            if not self.x.is_floating_point():
                raise RfbenchError(f"images must be uint8 or floating point in [0,1], got {self.x.dtype}")
            self.x = self.x.float()
            if len(self.x) and (float(self.x.min()) < 0 or float(self.x.max()) > 1):
                raise RfbenchError(f"float images must lie in [0,1] (min {float(self.x.min()):.4g}, max "
                                   f"{float(self.x.max()):.4g}); models normalise inside, pass uint8 or x/255")
        self.y = torch.as_tensor(self.y).long().reshape(-1).cpu()
        if len(self.y) != len(self.x):
            raise RfbenchError(f"{len(self.x)} images but {len(self.y)} labels")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise RfbenchError(f"labels must lie in 0..{len(self.classes) - 1} (one per class name), got "
                               f"{int(self.y.min())}..{int(self.y.max())}")
        self.index = torch.arange(len(self.y)) if self.index is None else torch.as_tensor(self.index).long().cpu()

    @classmethod
    def from_dataset(cls, ds: ArrayDataset) -> "EvalData":
        return cls(ds.x, ds.y, list(ds.classes), ds.index)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, positions: torch.Tensor | list[int]) -> "EvalData":
        pos = torch.as_tensor(positions, dtype=torch.long)
        return EvalData(self.x[pos], self.y[pos], self.classes, self.index[pos])

    def batches(self, batch_size: int, device: torch.device | str):
        """Yield ``(x, y, pos)``: float [0,1] images on ``device``, labels, positions in this set (in order)."""
        for start in range(0, len(self), batch_size):
            pos = torch.arange(start, min(start + batch_size, len(self)))
            x = self.x[pos].to(device, non_blocking=True)
            yield (to_float(x) if x.dtype == torch.uint8 else x), self.y[pos].to(device, non_blocking=True), pos


def perturbation_norm(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """‖x_adv − x‖ per sample in ``norm`` (float64 to avoid rounding in the check)."""
    d = (x_adv.double() - x.double()).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(p=2, dim=1)


def verify_in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, label: str) -> torch.Tensor:
    """Raise :class:`AttackBallError` unless every x_adv is finite, in [0,1] and within eps; return the norms."""
    if x_adv.shape != x.shape:
        raise AttackBallError(f"attack {label} returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackBallError(f"attack {label} returned non-finite values")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < 0 or hi > 1:
        raise AttackBallError(f"attack {label} returned values outside [0,1] (min {lo:.6g}, max {hi:.6g})")
    norms = perturbation_norm(x_adv, x, norm)
    tol = BALL_ATOL + (1e-5 * eps if norm == "l2" else 0.0)
    over = norms > eps + tol
    if over.any():
        raise AttackBallError(f"attack {label} left the {norm} ball of radius {eps:.6g} on {int(over.sum())} samples "
                              f"(largest perturbation {float(norms.max()):.6g})")
    return norms


def batch_seed(seed: int, label: str, batch: int, part: int | None = None) -> int:
    """The seed of one attack on one batch: a function of (seed, label, batch index) only.

    ``part`` numbers the pieces of a batch that was split after running out of memory.
    """
    entropy = [seed, zlib.crc32(label.encode()), batch] + ([part] if part is not None else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state (so a resume with other weights is refused)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def select_subset(test, n_per_class: int | None, seed: int):
    """The evaluated samples: the whole test set, or ``n_per_class`` per class (deterministic in ``seed``)."""
    return per_class_subset(test, n_per_class, seed=seed) if n_per_class else test


def order_attacks(attacks: list[Attack], scope: str) -> list[Attack]:
    """Cheap attacks first, in the given order, then the cascade attacks (they run on the survivors)."""
    if scope == "all":
        return list(attacks)
    return [a for a in attacks if not a.cascade] + [a for a in attacks if a.cascade]


def threat_key(atk: Attack) -> tuple[str, float]:
    """Attacks with equal (norm, eps) share survivors: a cascade attack runs on the points they left robust."""
    return atk.cfg.norm, round(float(atk.cfg.eps), 12)


def attack_settings(attacks: list[Attack], scope: str) -> dict[str, dict[str, Any]]:
    """Full settings of every attack, with its scope (``all``, or ``survivors`` of the same-threat attacks before it)."""
    out: dict[str, dict[str, Any]] = {}
    for i, a in enumerate(attacks):
        s = a.settings()
        s.pop("flags", None)
        if a.cascade and scope == "survivors":
            s["scope"] = "survivors"
            s["after"] = [b.label for b in attacks[:i] if threat_key(b) == threat_key(a)]
        else:
            s["scope"] = "all"
        out[a.label] = s
    return out


def _open_flags(path: Path | None, test, labels: list[str], meta: dict, overwrite: bool,
                staged: bool = False) -> SampleFlags:
    if path is not None and path.exists() and not overwrite:
        old = SampleFlags.load(path)
        if old.meta.get("static") == meta["static"]:
            log.info("resuming from %s: %d of %d samples done", path, int(old.done.sum()), len(old.done))
            return old
        if staged:  # an interrupted --overwrite of another evaluation: its staged batches are of no use
            return SampleFlags.empty(test.index.numpy(), test.y.numpy(), labels, meta)
        diff = sorted(k for k in set(old.meta.get("static", {})) | set(meta["static"])
                      if old.meta.get("static", {}).get(k) != meta["static"].get(k))
        raise RfbenchError(f"{path} belongs to a different evaluation (differs in: {', '.join(diff)}); "
                           "use another --out or pass --overwrite")
    return SampleFlags.empty(test.index.numpy(), test.y.numpy(), labels, meta)


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


#: how allocators say "out of memory" (CUDA; the CPU allocator; Windows)
OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Out of memory on the device or the CPU: ``torch.OutOfMemoryError``, ``MemoryError``, or a RuntimeError saying so."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in OOM_TEXTS)


def out_of_memory_text(exc: BaseException) -> str:
    """The first line of an out-of-memory error (at most 200 characters; the allocator's report can be long)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _attack_piece(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rows: np.ndarray, attacks: list[Attack],
                  flags: SampleFlags, *, seed: Callable[[str], int], survivors_scope: bool,
                  on_attack: Callable[[str], None] | None = None,
                  timing: dict[str, list] | None = None) -> torch.Tensor:
    """Clean pass and every attack on one piece of a batch, written into ``flags``; returns the first threat's survivors."""
    clean = _predict(model, x)
    flags.clean_pred[rows] = clean.cpu().numpy()
    alive = {threat_key(a): clean == y for a in attacks}  # robust so far, per threat
    for a_idx, atk in enumerate(attacks):
        key = threat_key(atk)
        cascade = atk.cascade and survivors_scope
        sel = alive[key].nonzero().squeeze(1) if cascade else torch.arange(len(y), device=x.device)
        if sel.numel() == 0:
            continue
        if on_attack is not None:
            on_attack(atk.label)
        t_atk = time.monotonic()
        xs, ys = x[sel], y[sel]
        x_adv = atk(xs, ys, seed=seed(atk.label))
        norms = verify_in_ball(x_adv, xs, atk.cfg.eps, atk.cfg.norm, atk.label)
        pred = _predict(model, x_adv)
        r = rows[sel.cpu().numpy()]
        flags.adv_pred[r, a_idx] = pred.cpu().numpy()
        flags.ran[r, a_idx] = True
        flags.pert[r, a_idx] = norms.float().cpu().numpy()
        alive[key][sel] &= pred == ys
        if timing is not None:
            t = timing.setdefault(atk.label, [0.0, 0])
            t[0] += time.monotonic() - t_atk
            t[1] += int(sel.numel())
    return alive[threat_key(attacks[0])] if attacks else clean == y


def _reset_rows(flags: SampleFlags, rows: np.ndarray) -> None:
    """Forget a failed attempt at these rows (a cascade attack must not see stale ``ran`` flags)."""
    flags.clean_pred[rows] = -1
    flags.adv_pred[rows] = -1
    flags.ran[rows] = False
    flags.pert[rows] = np.nan


def run_attacks(
    model: torch.nn.Module,
    test: EvalData,
    attacks: list[Attack],
    flags: SampleFlags,
    flags_path: Path | None,
    *,
    cfg: EvalConfig,
    device: torch.device,
    callback: Callable[[int], None] | None = None,
    channels_last: bool = False,
    owns: Callable[[int], bool] | None = None,
) -> dict[str, list]:
    """The batch loop: fill ``flags`` batch by batch, saving after each (when ``flags_path``), skipping finished batches.

    Out of device memory
    on a batch, the batch is redone in pieces of half the size, halving again (one
    retry per halving) until it fits; the smaller size is kept for the following
    batches, and every halving is logged and recorded in the flag file's
    ``meta["oom_halvings"]``.  A batch split into pieces seeds each piece's attacks
    with ``batch_seed(seed, label, batch, part)``.  Returns, per attack label, the
    seconds spent and the images attacked in this process (images/s).  ``owns(b)``
    false skips global batch ``b`` (another shard's, :mod:`rfbench.benchmark.eval.shard`).
    """
    bs = cfg.batch_size
    n_batches = (len(test) + bs - 1) // bs
    done_batches = [bool(flags.done[b * bs : (b + 1) * bs].all()) for b in range(n_batches)]
    survivors_scope = cfg.autoattack_scope == "survivors"
    progress = EvalProgress(len(test), int(flags.done.sum()), [a.label for a in attacks], quiet=cfg.quiet,
                            every_s=cfg.progress_every)
    cl = channels_last
    piece = bs  # the largest piece that fitted in memory so far
    timing: dict[str, list] = {}
    try:
        for b, (x, y, pos) in enumerate(test.batches(bs, device)):
            if done_batches[b] or (owns is not None and not owns(b)):
                continue
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            rows = pos.numpy()
            t_batch = time.monotonic()
            while True:
                try:
                    alive = []
                    for part, start in enumerate(range(0, len(y), piece)):
                        whole = piece >= len(y)
                        seed = (lambda lab, part=part: batch_seed(cfg.seed, lab, b, None if whole else part))
                        sl = slice(start, start + piece)
                        alive.append(_attack_piece(model, x[sl], y[sl], rows[sl], attacks, flags, seed=seed,
                                                   survivors_scope=survivors_scope, on_attack=progress.attack,
                                                   timing=timing))
                    break
                except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
                    if not is_out_of_memory(exc):
                        raise
                # out of memory; outside the except block, so the failed attempt's tensors can be freed
                _reset_rows(flags, rows)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                size = min(piece, len(y))
                if size == 1:
                    raise RfbenchError(f"out of memory on batch {b + 1} even one image at a time; free the device "
                                       "or use a smaller model")
                piece = size // 2
                log.warning("out of memory on batch %d at batch size %d: retrying with batch size %d", b + 1, size, piece)
                flags.meta.setdefault("oom_halvings", []).append({"batch": b, "from": size, "to": piece})
            flags.done[rows] = True
            flags.meta["attack_flags"] = {a.label: a.flags for a in attacks if a.flags}
            flags.meta["elapsed_s"] = flags.meta.get("elapsed_s", 0.0) + time.monotonic() - t_batch
            if flags_path is not None:
                flags.save(flags_path)
            progress.images_done(len(rows), float(torch.cat(alive).float().mean()))
            log.debug("batch %d/%d done", b + 1, n_batches)
            if callback is not None:
                callback(b)
    finally:
        progress.close()
    return timing


def _owns(y: torch.Tensor, batch_size: int, shard: Shard | None) -> Callable[[int], bool] | None:
    """Which global batches this process runs: all (None), a shard's (:func:`~rfbench.benchmark.eval.shard.batch_owners`), or none."""
    if shard is None:
        return None
    owners = batch_owners(y.numpy(), batch_size, shard.count)
    return lambda b: shard.index is not None and int(owners[b]) == shard.index


#: how long a finishing shard waits for another one's merge (a merge reads the shard files and writes one group)
MERGE_WAIT_S = 600.0


def _merge_lock(out_dir: Path) -> contextlib.AbstractContextManager:
    """One merge at a time in ``out_dir`` (``OUT/.merge.rfbench.lock``): shards that finish together merge in turn.

    A waiting shard merges again after the first; both read the same finished
    shard files, so the second writes the same flags and result (only its timings differ),
    and no reader ever sees two merges' files mixed.
    """
    from rfbench.core.io.lock import exclusive_dir

    return exclusive_dir(out_dir / "merge", "the shard merge of", shown=str(out_dir), wait_s=MERGE_WAIT_S)


def evaluate_data(
    model: torch.nn.Module,
    data: EvalData,
    threat: Threat,
    cfg: EvalConfig,
    out_dir: str | Path | None = None,
    *,
    dataset: str | dict[str, Any] = "tensors",
    train_counts: list[int] | None = None,
    imbalance_ratio: float | None = None,
    source: dict[str, Any] | None = None,
    callback: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> EvalResult:
    """The harness core: evaluate ``model`` on ``data`` under ``threat``; the validated ``rfbench.result/2`` result.

    Writes the flag file (resumable), ``result.json``, the CSV and markdown tables
    (and the plots) only when ``out_dir`` is given; without it everything stays in
    memory.  ``dataset`` is the dataset's name, or a mapping ``{"name", ...}``
    describing it (see :func:`~rfbench.benchmark.eval.provenance.dataset_description`);
    ``train_counts`` and ``imbalance_ratio`` give the long-tailed class groups.
    ``source`` describes where the model came from (for the provenance);
    ``callback(batch_index)`` runs after each finished batch (tests use it to
    simulate a kill).  ``shard`` (:class:`~rfbench.benchmark.eval.shard.Shard`) runs
    only that shard's batches into ``OUT/shard-K-of-N/flags.npz``; then, when every
    shard has finished, merges the shard files and returns the result of the whole
    evaluation, else raises :class:`~rfbench.benchmark.eval.shard.ShardsIncomplete`.
    The merge step ``Shard(None, N)`` runs no batch, only the merge.
    """
    t0 = time.monotonic()
    out_dir = Path(out_dir) if out_dir is not None else None
    if shard is not None and (out_dir is None or cfg.overwrite):
        raise RfbenchError("a sharded evaluation needs an output directory and no --overwrite (remove the "
                           "directory to start again)")
    final_dir = None  # with --overwrite of an existing evaluation: the new one is staged beside it, swapped in at the end
    if out_dir is not None:
        finish_swap(out_dir)  # an --overwrite killed after its commit point ends as the new evaluation
    if out_dir is not None and cfg.overwrite and any((out_dir / n).exists() for n in OUTPUT_FILES):
        # the staging directory is kept: an interrupted overwrite of the same evaluation resumes its batches
        final_dir, out_dir = out_dir, staging_dir(out_dir)
    own_dir = shard.directory(out_dir) if shard is not None and out_dir is not None and not shard.merging else out_dir
    if own_dir is not None:
        own_dir.mkdir(parents=True, exist_ok=True)  # exists from the start; flags.npz from the first finished batch
        if stale := remove_stale_temps(own_dir):  # left by a killed write
            log.info("removed %d temporary file(s) left in %s by an interrupted write", len(stale), own_dir)
    device = resolve_device(cfg.device)
    threads = apply_cpu_threads(device)
    model = model.to(device).eval()
    if len(data) == 0:
        raise RfbenchError("nothing to evaluate: no samples")
    test = select_subset(data, cfg.n_per_class, cfg.subset_seed)
    specs = list(cfg.attacks) or list(DEFAULT_SUITE)
    attacks = build_attacks(specs, model, threat)
    if cfg.t_sweep:
        attacks = build_attacks(specs + t_sweep_specs(cfg.t_sweep, sweep_base(attacks)), model, threat)
    attacks = order_attacks(attacks, cfg.autoattack_scope)
    dtype = autocast_dtype(cfg.amp, device)
    for a in attacks:
        a.autocast_dtype = dtype
    settings = attack_settings(attacks, cfg.autoattack_scope)
    samples = samples_digest(test)
    static = {"attacks": settings, "seed": cfg.seed, "batch_size": cfg.batch_size, "model": model_digest(model),
              "index": hashlib.sha256(test.index.numpy().tobytes()).hexdigest()[:16], "images": samples["images_sha256"],
              "scope": cfg.autoattack_scope, "amp": cfg.amp}
    static = json.loads(json.dumps(static))  # as it reads back from the file (tuples -> lists)
    with contextlib.ExitStack() as merge_lock:  # a merging shard holds OUT's merge lock until its group is written
        flags_path = own_dir / FLAGS_FILE if own_dir is not None else None
        flags = _open_flags(flags_path, test, [a.label for a in attacks], {"static": static},
                            cfg.overwrite and final_dir is None, staged=final_dir is not None)
        if shard is not None and shard.merging and out_dir is not None and not flags.done.all():
            merge_lock.enter_context(_merge_lock(out_dir))
            flags = merge_shard_flags(flags, out_dir, shard.count, FLAGS_FILE)  # raises ShardsIncomplete
            flags.save(out_dir / FLAGS_FILE)
        for a in attacks:  # flags raised before a kill are kept
            a.flags.update(flags.meta.get("attack_flags", {}).get(a.label, {}))
        num_classes = len(data.classes)
        x0, y0, _ = next(test.batches(min(len(test), cfg.batch_size, MODEL_CHECK_SAMPLES), device))
        model_check = check_model(model, x0, y0, num_classes)  # raises for a wrong shape or NaN outputs
        channels_last = use_channels_last(cfg.channels_last, device, autocast_dtype(cfg.amp, device))
        if channels_last is None:  # auto on CPU fp32: whichever layout is faster for this model here
            channels_last, ms, cached = cached_channels_last(model, (cfg.batch_size, *x0.shape[1:]), device)
            log.info("%s", layout_message(channels_last, ms, cached))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        log.info("evaluating %d samples (%d classes) with %s; threat %s eps=%g on %s%s",
                 len(test), num_classes, ", ".join(a.label for a in attacks), threat.norm, threat.eps, device,
                 f"; writing {out_dir}" if out_dir is not None else "")
        timing = run_attacks(model, test, attacks, flags, flags_path, cfg=cfg, device=device, callback=callback,
                             channels_last=channels_last, owns=_owns(test.y, cfg.batch_size, shard)) or {}
        if shard is not None and not shard.merging and out_dir is not None:  # the last shard to finish merges
            merge_lock.enter_context(_merge_lock(out_dir))
            flags = merge_shard_flags(flags, out_dir, shard.count, FLAGS_FILE)  # raises ShardsIncomplete
            flags.save(out_dir / FLAGS_FILE)
        for lab, s in settings.items():
            f = flags.meta.get("attack_flags", {}).get(lab)
            if f:
                s["flags"] = f
        described = dataset_description(dataset)
        src = portable_source(source or {}, model)
        prov = provenance(cfg=dataclasses.asdict(cfg), source=src, device=device, wall_time=time.monotonic() - t0)
        prov["attack_time_s"] = round(flags.meta.get("elapsed_s", 0.0), 2)  # summed over resumed runs
        prov["attack_rates"] = {lab: {"seconds": round(sec, 3), "images": n, "images_per_s": round(n / sec, 3) if sec > 0 else None}
                                for lab, (sec, n) in timing.items()}  # this process's batches
        prov["oom_halvings"] = flags.meta.get("oom_halvings", [])
        prov["channels_last"] = channels_last
        if threads is not None:
            prov["cpu_threads"] = threads.as_dict()
        if "shards" in flags.meta:
            prov["shards"] = flags.meta["shards"]
        prov["dataset"] = described
        if flags_path is not None and flags_path.exists():  # ties result.json to its flag file (group.check_group)
            prov["flags_sha256"] = file_sha256(flags_path)
        result = build_result(flags, classes=list(data.classes), settings=settings, threat=threat, dataset=described["name"],
                              train_counts=train_counts, imbalance_ratio=imbalance_ratio,
                              weight_norms=class_weight_norms(model), provenance=prov,
                              n_per_class_requested=cfg.n_per_class, flags_file=FLAGS_FILE, source=src)
        result["samples"] = samples
        result["checks"]["model"] = model_check
        result["checks"]["predictions"] = check_predictions(flags.clean_pred, flags.y, num_classes)
        result["checks"]["overall"] = overall_verdict(result["checks"])
        typed = EvalResult.from_dict(result)  # validated and frozen: what every caller and the files get
        if out_dir is not None:
            write_outputs(typed, out_dir, plot=cfg.plot)
        if final_dir is not None:
            swap_in(out_dir, final_dir)
        return typed


def evaluate(
    model: torch.nn.Module,
    bundle: DataBundle,
    cfg: EvalConfig,
    out_dir: str | Path | None,
    *,
    source: dict[str, Any] | None = None,
    callback: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``bundle``'s test split at the dataset's protocol threat (``cfg.eps``/``cfg.norm`` applied).

    A thin layer over :func:`evaluate_data`; writes result.json, the CSV and the
    flag file (and plots) into ``out_dir`` (nothing when it is None).  The class
    groups of a long-tailed set use the run's training counts when ``source``
    has them (an evaluation loads only the test split), else the bundle's.
    """
    threat = resolve_threat(bundle.threat, "eval", eps=cfg.eps, norm=cfg.norm)
    counts = (source or {}).get("train_counts") or (None if bundle.eval_only else bundle.train_counts)
    return evaluate_data(model, EvalData.from_dataset(bundle.test), threat, cfg, out_dir,
                         dataset={"name": bundle.name, "notes": list(bundle.notes)}, train_counts=counts,
                         imbalance_ratio=bundle.imbalance_ratio, source=source, callback=callback, shard=shard)
