"""``rfbench calibrate``: fit a per-class logit bias or classifier-norm scaling on a run's validation split.

The fit maximises worst-class robust accuracy on the validation split (never
the test set) and freezes the result in ``--out`` (see :mod:`rfbench.benchmark.eval.calibrate`).
Calibration is rfbench's own invention, not from a paper.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  rfbench calibrate --run runs/fmnist/pgd-at --method bias --out runs/fmnist/pgd-at-calib-bias
  rfbench calibrate --run runs/cifar10/trades --which last --method norm --steps 10 --out runs/cifar10/trades-calib-norm

The output directory holds calibration.pt (frozen scale and bias, loaded with
weights_only=True) and calibration.json (the fit report: validation per-class
accuracy before and after).  Evaluate it like a run directory, AutoAttack included
(post-hoc logit changes can mask gradients); in Python:
  benchmark.calibrate.load_calibrated_model("runs/fmnist/pgd-at-calib-bias") -> (model, info)
"""


def run(args: argparse.Namespace) -> int:
    from rfbench.core.io.atomic import remove_stale_temps
    from rfbench.core.io.lock import exclusive_dir

    # one writer for the whole command: a second calibrate on the same --out stops at once, not after its fit
    with exclusive_dir(args.out, "calibration directory"):
        _check_out(args.run, args.out)
        remove_stale_temps(args.out)  # left by a calibrate killed mid-write
        out, lines = _calibrate(args)
    for line in lines:
        print(line)
    print(f"calibration written to {out}", file=sys.stderr)
    return 0


def _check_out(run_dir: str, out: str) -> None:
    """``--out`` must not be the run directory (or another run directory): it would hide the run's checkpoints."""
    from rfbench.benchmark.train.rundir import CHECKPOINTS
    from rfbench.core.errors import RfbenchError

    target = Path(out).resolve()
    if target == Path(run_dir).resolve():
        raise RfbenchError(f"--out {out} is the run directory itself; every later `rfbench eval --run {run_dir}` would "
                           "evaluate the calibration instead of the run's checkpoints; give another --out")
    held = [name for name in CHECKPOINTS.values() if (target / name).exists()]
    if held:
        raise RfbenchError(f"--out {out} holds a training run ({held[0]}); a calibration there would hide its "
                           "checkpoints from `rfbench eval --run`; give another --out")


def _calibrate(args: argparse.Namespace) -> tuple[Path, list[str]]:
    from rfbench.benchmark.data import to_float
    from rfbench.benchmark.eval.calibrate import CalibrationConfig, fit_calibration, save_calibration
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.benchmark.train.data import load_bundle
    from rfbench.benchmark.train.rundir import load_run_model
    from rfbench.benchmark.train.runtime import resolve_device
    from rfbench.core.config import from_dict
    from rfbench.core.threat import resolve_threat

    device = resolve_device(args.device)
    model, info = load_run_model(args.run, args.which, device=device)
    train_cfg = from_dict(TrainConfig, info["config"], where=f"{args.run} config")
    bundle = load_bundle(train_cfg)  # the run's own validation split (same dataset, seed and split rule)
    # the one resolution rule: dataset evaluation protocol, then the run's training threat (norm, eps), then flags
    run_threat = info["meta"]["threat"]
    threat = resolve_threat(bundle.threat, "eval", norm=run_threat["norm"],
                            eps=args.eps if args.eps is not None else run_threat["eps"],
                            alpha=args.alpha, steps=args.steps)
    values = {
        "method": args.method,
        "eps": threat.eps,
        "alpha": threat.alpha,
        "steps": threat.steps,
        "norm": threat.norm,
        "targets": args.targets,
        "rounds": args.rounds,
        "grid": args.grid,
        "passes": args.passes,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    cfg = from_dict(CalibrationConfig, values, where="calibrate")
    x, y = to_float(bundle.val.x), bundle.val.y
    result = fit_calibration(model, x, y, cfg, num_classes=bundle.num_classes, device=device)
    out = save_calibration(args.out, result, args.run, args.which, cfg)
    b, a = result.before, result.after
    rows = [("before", b), ("after", a)]
    lines = [f"validation ({len(y)} images, PGD-{cfg.steps} + {min(cfg.targets, bundle.num_classes - 1)} targeted, "
             f"eps {cfg.eps:.4g}), method {cfg.method}:",
             f"{'':8}{'clean mean':>12}{'clean worst':>13}{'robust mean':>13}{'robust worst':>14}"]
    for name, d in rows:
        c, r = d["clean_acc"], d["robust_acc"]
        lines.append(f"{name:8}{sum(c) / len(c):12.4f}{min(c):13.4f}{sum(r) / len(r):13.4f}{min(r):14.4f}")
    return out, lines


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter, add_allow_code
    from rfbench.benchmark.cli.config_args import _number

    p = sub.add_parser("calibrate", help="fit a post-hoc per-class logit calibration for the worst class (rfbench's own invention)",
                       description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, metavar="DIR", help="run directory written by `rfbench train`")
    p.add_argument("--which", default="best", help="checkpoint: best, last, or an extra model such as fawa-best")
    p.add_argument("--method", choices=["bias", "norm"], default="bias",
                   help="per-class logit bias, or per-class classifier-norm (logit) scaling")
    p.add_argument("--out", required=True, metavar="DIR", help="where calibration.pt and calibration.json go")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--eps", type=_number, default=None, help="attack radius, e.g. 8/255; None = the run's training eps")
    p.add_argument("--alpha", type=_number, default=None, help="attack step; None = the evaluation step rule (the protocol's alpha/eps ratio times eps)")
    p.add_argument("--steps", type=int, default=None, help="attack steps; None = the dataset's evaluation PGD steps")
    p.add_argument("--targets", type=int, default=9, help="targeted attack points per sample (most likely other classes)")
    p.add_argument("--rounds", type=int, default=None, help="re-attack/refit rounds; None = 1 for bias, 3 for norm")
    p.add_argument("--grid", type=int, default=41, help="candidate values per class and pass")
    p.add_argument("--passes", type=int, default=6, help="coordinate-ascent passes per fit")
    p.add_argument("--batch-size", type=int, default=256, help="attack batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    add_allow_code(p, "the run directory's config.yaml")
    p.set_defaults(func=run)
