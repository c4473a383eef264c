"""``rfbench smoke``: every defense through the real run path, shrunk to seconds, with its results validated.

The smoke run is the ``fashion-mnist-linf`` track (the same code path and the
same per-defense presets) shrunk in the spirit of DeepMind's smoke tests: a
narrow SmallCNN, one epoch on 1,280 images (40 optimiser steps, no lr warm-up; at 20 steps an
undefended model could stay within noise of chance under the track's 1 thread),
PGD-3 training, and a cheap attack suite (FGSM, PGD-5, CW-5) on a few hundred
test images; a defense's own validation attack (a ``val_steps`` field of its
``Config``, as FRL has) is shrunk to the same 2 steps as the trainer's.  For each defense it asserts:

* the run finishes (finite losses: the trainer stops on NaN/Inf);
* each evaluated ``result.json`` validates against ``rfbench.result/2``;
* the harness's sanity checks do not fail (robust <= clean, PGD <= FGSM per class);
* the per-class vectors are counts, the worst case is below clean and every
  attack, and every summary equals the one recomputed from its per-class
  vector and from the per-sample flags (the leaderboard checks).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfbench.benchmark.runner.config import ResolvedRun, load_run_config, resolve_run, slug
from rfbench.benchmark.runner.run import execute_run
from rfbench.core.errors import RfbenchError
from rfbench.core.io import read_json

log = logging.getLogger(__name__)

TRACK = Path("leaderboards") / "fashion-mnist-linf" / "track.yaml"
#: training keys of the shrunk run (applied to the pre-training stage too); the optimiser and lr are the track's,
#: without its lr warm-up (200 steps would keep the lr near 0 for all of the smoke run's 20 steps)
SMOKE_TRAIN = {"max_train_samples": 1280, "epochs": 1, "batch_size": 32, "steps": 3, "val_per_class": 10,
               "val_steps": 2, "lr_warmup_iters": 0, "model_kwargs": {"width": 0.5}, "device": "cpu"}
SMOKE_EVAL = {"n_per_class": 30, "batch_size": 300, "plot": False, "device": "cpu", "quiet": True}
SMOKE_ATTACK_STEPS = 5


def smoke_attacks(eps: float) -> list[str]:
    """FGSM, PGD-5 and CW-5 with step 2.5 eps / steps (Madry et al. 2018), so PGD can cover the ball as FGSM does.

    With the track's eval step (eps / 4) a 3-step PGD travels 0.75 eps from
    its random start and, on a barely trained and nearly linear model, is
    weaker than FGSM's single eps-step: the PGD <= FGSM check then fails for
    the attack's sake, not the defense's.
    """
    alpha = f"{2.5 * eps / SMOKE_ATTACK_STEPS:.6g}"
    return ["fgsm", f"pgd:steps={SMOKE_ATTACK_STEPS},alpha={alpha}", f"cw:steps={SMOKE_ATTACK_STEPS},alpha={alpha}"]
SMOKE_CHECKPOINTS = ["best"]


class SmokeFailure(RfbenchError):
    """A defense failed the smoke benchmark."""


@dataclass
class SmokeRow:
    defense: str
    ok: bool
    seconds: float
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    clean: float | None = None
    robust: float | None = None
    worst_class: str = ""
    worst: float | None = None
    checks: str = ""
    error: str = ""


def defense_fields(defense: str) -> set[str]:
    """Hyper-parameter names of a defense's ``Config``."""
    from rfbench.defenses.registry import get_defense_class

    cfg = get_defense_class(defense).Config
    return {f.name for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else set()


def shrink(run: ResolvedRun, out: Path) -> ResolvedRun:
    """The smoke version of a resolved run: tiny training, cheap attacks, one checkpoint."""
    def small(cfg, sub: str):
        keys = {**SMOKE_TRAIN, "model_kwargs": {**cfg.model_kwargs, **SMOKE_TRAIN["model_kwargs"]}}
        if "val_steps" in defense_fields(cfg.defense):
            keys["defense_args"] = {**cfg.defense_args, "val_steps": SMOKE_TRAIN["val_steps"]}
        return dataclasses.replace(cfg, out=str(out / sub), **keys)

    pretrain = small(run.pretrain, "pretrain") if run.pretrain else None
    train = small(run.train, "train")
    if pretrain is not None:
        train = dataclasses.replace(train, init=str(out / "pretrain" / "checkpoint-best.pt"))
    eval_keys = {**SMOKE_EVAL, "attacks": smoke_attacks(run.eval.eps)}
    ev = dataclasses.replace(run.eval, **eval_keys)
    data = {**run.data, "out": str(out), "smoke": {"train": SMOKE_TRAIN, "eval": eval_keys}}
    return dataclasses.replace(run, out=out, train=train, pretrain=pretrain, eval=ev, checkpoints=list(SMOKE_CHECKPOINTS),
                               data=data)


def verify_run(run_dir: Path) -> dict[str, Any]:
    """Validate every result of a finished run; raise :class:`SmokeFailure` naming the first problem."""
    from rfbench.benchmark.eval.result import validate_result
    from rfbench.benchmark.leaderboard.check import check_evaluation, check_flags
    from rfbench.benchmark.leaderboard.schema import Evaluation

    run = read_json(run_dir / "result.json")
    for which, block in run["checkpoints"].items():
        full = read_json(run_dir / block["result"])
        try:
            validate_result(full)
        except ValueError as exc:
            raise SmokeFailure(f"{which}: result.json does not validate: {exc}") from None
        if full["checks"]["overall"] == "fail":
            failed = [k for k, v in full["checks"].items() if isinstance(v, dict) and v.get("verdict") == "fail"]
            raise SmokeFailure(f"{which}: sanity checks failed: {', '.join(failed)}")
        ev = Evaluation(attacks=block["attacks"], worst_case_over=block["worst_case_over"],
                        n_per_class=block["n_per_class"], per_class=block["per_class"], summary=block["summary"],
                        checks=block["checks"])
        problems = check_evaluation(which, ev, block["classes"])
        problems = problems or check_flags(which, ev, run_dir / block["flags_file"])
        if problems:
            raise SmokeFailure(f"{which}: {problems[0]}")
    return run


def smoke_one(defense: str, out: Path, track: Path = TRACK) -> SmokeRow:
    """Train, evaluate and verify one defense; failures become a row, not an exception."""
    t0 = time.monotonic()
    run_dir = out / slug(defense)
    try:
        run = shrink(resolve_run(load_run_config(track), defense=defense, device="cpu", quiet=True), run_dir)
        execute_run(run, force=True, quiet=True)
        result = verify_run(run_dir)
        block = next(iter(result["checkpoints"].values()))
        wc = block["summary"]["worst_case"]
        return SmokeRow(defense=defense, ok=True, seconds=time.monotonic() - t0,
                        train_seconds=result["cost"]["train_seconds"], eval_seconds=result["cost"]["eval_seconds"],
                        clean=block["summary"]["clean"]["mean"], robust=wc["mean"], worst=wc["worst"],
                        worst_class=block["classes"][wc["worst_class"]], checks=block["checks"])
    except (RfbenchError, RuntimeError, ValueError, KeyError, OSError) as exc:
        log.debug("smoke %s failed", defense, exc_info=True)
        return SmokeRow(defense=defense, ok=False, seconds=time.monotonic() - t0, error=f"{type(exc).__name__}: {exc}")


def smoke_table(rows: list[SmokeRow]) -> str:
    import pandas as pd

    from rfbench.core.perclass import pct

    df = pd.DataFrame([{"defense": r.defense, "status": "ok" if r.ok else "FAIL", "time (s)": f"{r.seconds:.1f}",
                        "train (s)": f"{r.train_seconds:.1f}", "eval (s)": f"{r.eval_seconds:.1f}", "clean": pct(r.clean),
                        "robust": pct(r.robust), "worst class": f"{r.worst_class} {pct(r.worst)}" if r.ok else "-",
                        "checks": r.checks or "-", "error": r.error[:120]} for r in rows])
    return df.to_markdown(index=False)
