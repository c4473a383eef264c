"""Execute one run: pretrain (optional) -> train -> evaluate each selected checkpoint -> report.

Example::

    from rfbench.benchmark.runner import load_run_config, resolve_run, execute_run
    run = resolve_run(load_run_config("leaderboards/fashion-mnist-linf/track.yaml"), defense="trades", seed=1)
    run_dir = execute_run(run)            # runs/fashion-mnist-linf/trades-s1/result.json

Run directory::

    run.yaml            the resolved run config
    stages.json         stage markers (see benchmark.runner.stages)
    pretrain/, train/   trainer run directories (checkpoint-best.pt, checkpoint-last.pt, log.jsonl, summary.json)
    eval-best/, eval-last/   rfbench.result/2 + flags.npz + CSV + plots of each checkpoint
    result.json, report.md, per_class.png, training.png

Idempotent: a finished stage is skipped on rerun, a killed stage resumes
(the trainer from its last checkpoint, the evaluation batch by batch), and
a finished ``result.json`` is never overwritten without ``force``.  A rerun
with a different config is refused (``force`` starts over).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import yaml

from rfbench.benchmark.runner.config import ResolvedRun, config_differences, fingerprint
from rfbench.benchmark.runner.report import build_run_result, write_run_outputs
from rfbench.benchmark.runner.stages import StageLog
from rfbench.core.config import dump_yaml
from rfbench.core.errors import ConfigError
from rfbench.core.io import atomic_write_bytes, atomic_write_text
from rfbench.core.perclass import pct

log = logging.getLogger(__name__)

RUN_FILE, RESULT_FILE = "run.yaml", "result.json"


def is_finished(run_dir: str | Path) -> bool:
    """True when the run's ``result.json`` exists and its last stage is marked done."""
    run_dir = Path(run_dir)
    return (run_dir / RESULT_FILE).exists() and StageLog(run_dir).done("report")


def _check_same_config(run: ResolvedRun) -> None:
    path = run.out / RUN_FILE
    if not path.exists():
        return
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    diff = config_differences(fingerprint(saved), fingerprint(run.data))
    if diff:
        raise ConfigError(f"{run.out} holds a run with a different config ({', '.join(diff[:6])} differ); "
                          "use another --out, or --force to start over")


def _clear_outputs(run: ResolvedRun) -> None:
    """``--force``: drop the evaluations and the run result (the trainer restarts its own stages)."""
    for which_dir in run.out.glob("eval-*"):
        shutil.rmtree(which_dir)
    for name in (RESULT_FILE, "report.md", "per_class.png", "training.png"):
        (run.out / name).unlink(missing_ok=True)


def _train_stage(cfg, quiet: bool, force: bool) -> None:
    from rfbench.benchmark.train.trainer import train

    train(cfg, quiet=quiet, force=force)


def _reuse_identical(run: ResolvedRun, which: str, model, evaluated: dict[str, str]) -> None:
    """When ``which`` holds the same weights as a checkpoint already evaluated (best = last epoch), start its
    evaluation from that one's finished flag file: the harness then resumes with nothing left to attack."""
    from rfbench.benchmark.eval.harness import FLAGS_FILE, model_digest

    digest = model_digest(model)
    same = evaluated.get(digest)
    target = run.out / f"eval-{which}" / FLAGS_FILE
    if same is not None and not target.exists():
        log.info("checkpoint %s has the same weights as %s: reusing its per-sample results", which, same)
        atomic_write_bytes(target, (run.out / f"eval-{same}" / FLAGS_FILE).read_bytes())
    evaluated.setdefault(digest, which)


def _eval_stage(run: ResolvedRun, which: str, bundles: dict[str, Any], evaluated: dict[str, str]) -> Mapping[str, Any]:
    from rfbench.benchmark.data import load_dataset
    from rfbench.benchmark.eval import evaluate
    from rfbench.benchmark.eval.models import data_args_from_run, from_run
    from rfbench.benchmark.train.runtime import resolve_device

    device = resolve_device(run.eval.device)
    model, source = from_run(run.out / "train", which, device=device)
    _reuse_identical(run, which, model, evaluated)
    data = data_args_from_run(source)
    key = repr(sorted(data.items()))
    if key not in bundles:
        name = data.pop("name")
        bundles[key] = load_dataset(name, **data)
    return evaluate(model, bundles[key], run.eval, run.out / f"eval-{which}", source=source)


def check_checkpoint_names(run: ResolvedRun) -> None:
    """Refuse, before any training, a ``checkpoints:`` name that the trained run will not have.

    Valid: ``best``, ``last``, and ``NAME`` / ``NAME-best`` for a weight average the training
    defense requests (e.g. CFA's ``fawa``); the defense is built on a placeholder context to
    ask it.  A defense that cannot be built that way is not second-guessed here.
    """
    from rfbench.core.errors import ConfigError
    from rfbench.core.threat import Threat
    from rfbench.defenses.base import TrainContext
    from rfbench.defenses.registry import build_defense
    from rfbench.models.averaging import WeightAverages

    odd = [w for w in run.checkpoints if w not in ("best", "last")]
    if not odd:
        return
    averages = WeightAverages()
    try:
        ctx = TrainContext(num_classes=10, train_counts=[100] * 10, threat=Threat(), epochs=run.train.epochs,
                           averages=averages)
        build_defense(run.train.defense, run.train.defense_args, ctx)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - the placeholder context may not suit this defense; the check is best effort
        return
    known = list(averages.names)
    bad = [w for w in odd if w.removesuffix("-best") not in known]
    if bad:
        extra = "".join(f", {n}, {n}-best" for n in known)
        raise ConfigError(f"run config: 'checkpoints' names {', '.join(map(repr, bad))}, which defense "
                          f"{run.train.defense!r} does not save; valid: best, last{extra}")


def execute_run(run: ResolvedRun, *, force: bool = False, quiet: bool = False) -> Path:
    """Run every unfinished stage of ``run``; return the run directory (holding ``result.json``)."""
    check_checkpoint_names(run)
    out = run.out
    if not force:
        _check_same_config(run)
        if is_finished(out):
            log.info("%s is finished; nothing to do (use --force to run it again)", out)
            return out
    out.mkdir(parents=True, exist_ok=True)
    with track_threads(run):
        return _execute(run, out, force=force, quiet=quiet)


@contextlib.contextmanager
def track_threads(run: ResolvedRun) -> Iterator[None]:
    """A track's ``protocol.threads`` as ``RFBENCH_THREADS`` while its run executes (a user's own setting wins)."""
    from rfbench.benchmark.train.threads import THREADS_ENV

    threads = (((run.data.get("track") or {}).get("protocol")) or {}).get("threads")
    if not threads or os.environ.get(THREADS_ENV):
        yield
        return
    os.environ[THREADS_ENV] = str(int(threads))
    try:
        yield
    finally:
        os.environ.pop(THREADS_ENV, None)


def _execute(run: ResolvedRun, out: Path, *, force: bool, quiet: bool) -> Path:
    stages = StageLog(out)
    if force:
        stages.reset()
        _clear_outputs(run)
    atomic_write_text(out / RUN_FILE, dump_yaml(run.data))
    log.info("run %s: %s on %s (%s), seed %d -> %s", run.name, run.defense, run.train.dataset, run.train.model,
             run.seed, out)
    if run.pretrain is not None and not stages.done("pretrain"):
        t0 = time.monotonic()
        _train_stage(run.pretrain, quiet, force)
        stages.mark("pretrain", time.monotonic() - t0)
    if not stages.done("train"):
        t0 = time.monotonic()
        _train_stage(run.train, quiet, force)
        stages.mark("train", time.monotonic() - t0)
    bundles: dict[str, Any] = {}
    evaluated: dict[str, str] = {}  # model digest -> checkpoint evaluated in this session
    for which in run.checkpoints:
        stage = f"eval-{which}"
        if stages.done(stage):
            continue
        t0 = time.monotonic()
        result = _eval_stage(run, which, bundles, evaluated)
        wc = result["summary"]["worst_case"]
        log.info("%s: clean %s%%, robust %s%% (worst class %s %s%%)", stage, pct(result["summary"]["clean"]["mean"]),
                 pct(wc["mean"]), result["classes"][wc["worst_class"]], pct(wc["worst"]))
        stages.mark(stage, time.monotonic() - t0, checks=result["checks"]["overall"])
    t0 = time.monotonic()
    result = build_run_result(out, run.data, run.checkpoints, stages.stages)
    write_run_outputs(result, out)
    stages.mark("report", time.monotonic() - t0)
    return out
