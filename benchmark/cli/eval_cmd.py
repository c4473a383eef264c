"""``rfbench eval``: per-class clean and robust accuracy of a model under a suite of attacks."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from rfbench.benchmark.cli.config_args import _number, resolve_config
from rfbench.benchmark.cli.sharding import add_shard_arguments, rank_device, run_ray_shards, shard_of
from rfbench.core.config import parse_override
from rfbench.core.errors import ConfigError

log = logging.getLogger(__name__)

EPILOG = """\
attack specs (--attack, repeatable): name[:key=value[,key=value...]]; lists inside a spec use '+'
  pgd                       PGD at the dataset's protocol (eps, steps, step size)
  pgd:steps=100,restarts=5  keys: eps, alpha, steps, restarts, loss (ce|cw|dlr|kl), start, norm, label
  cw:steps=20,kappa=50      PGD on the CW margin
  fgsm
  temperature-pgd:T=0.5     Temperature-PGD (tmode=confidence: per-sample T, rfbench's own invention)
  autoattack:version=standard
  autoattack:version=custom,attacks=apgd-ce+apgd-t,steps=20     (also queries=, restarts=, targets=)
  Without --attack: fgsm, pgd, cw.  AutoAttack runs on the points the other attacks left robust
  unless --autoattack-scope all.  --eps/--norm set every attack's default; a spec key overrides it.

examples:
  rfbench eval --run runs/demo --attack pgd:steps=20 --attack cw:steps=20 --attack temperature-pgd:T=0.5 \\
      --attack autoattack:version=custom,attacks=apgd-ce+apgd-t --out runs/demo/eval --plot
  rfbench eval --run runs/demo --attack pgd:steps=20 --t-sweep 0.1,0.5,1,2,5     (reports the strongest T)
  rfbench eval --model smallcnn --weights w.pt --dataset fashion-mnist --n-per-class 100
  rfbench eval --model my_nets.py:build --allow-code --weights w.pt --dataset cifar10
  rfbench eval --model robustbench:Carmon2019Unlabeled --dataset cifar10 --attack autoattack

sharded (the merged result equals one process's bit for bit; docs/evaluation.md):
  torchrun --standalone --nproc-per-node 4 -m rfbench eval --run-dir runs/demo --attack autoattack --out runs/demo/eval
      one shard per rank (any launcher setting RANK and WORLD_SIZE works); under torchrun write --run-dir,
      as torchrun's own parser takes --run for its --run-path
  rfbench eval ... --shard 1/4          one shard alone (e.g. to resume a killed one); the last shard merges
  rfbench eval ... --shards 4 --merge   merge the finished shards in --out into result.json
  rfbench eval ... --shards 4 --executor ray [--ray-address auto]   the shards as Ray tasks, merged last

A killed evaluation resumes batch by batch when the same command is run again (same --out).
Progress: a bar naming the running attack, with images/s and ETA, on a terminal; otherwise a log line
every --progress-every seconds.  --out exists from the start, flags.npz from the first finished batch.
Only the test split is read.  The table's last line names any sanity check that failed or warned;
--strict makes that exit status 1.
"""


def _t_values(text: str) -> list[float]:
    try:
        return [_number(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated temperatures, e.g. 0.1,0.5,1,2,5; got {text!r}") from None


def _model_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        path, value = parse_override(item)
        out[".".join(path)] = value
    return out


def _load_model(args: argparse.Namespace, device):
    """(model, source, bundle) for --run or --model."""
    from rfbench.benchmark.data import load_dataset
    from rfbench.benchmark.eval import models as M

    if args.run and args.model:
        raise ConfigError("give either --run or --model, not both")
    if args.run:
        model, source = M.from_run(args.run, args.which, device=device)
        data = M.data_args_from_run(source)
        name = args.dataset or data.pop("name")
        data.pop("name", None)
        if args.data_root:
            data["root"] = args.data_root
        data["download"] = data["download"] or args.download
        return model, source, load_dataset(name, **data, test_only=True)  # an evaluation never reads the training split
    if not args.model:
        raise ConfigError("say what to evaluate: --run DIR, or --model NAME|file.py:factory|robustbench:NAME")
    if not args.dataset:
        raise ConfigError("--model needs --dataset (e.g. --dataset fashion-mnist)")
    bundle = load_dataset(args.dataset, root=args.data_root, download=args.download, test_only=True)
    shape = {"num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "mean": bundle.mean, "std": bundle.std}
    if args.model.startswith("robustbench:"):
        model, source = M.from_robustbench(args.model.split(":", 1)[1], bundle.name,
                                           (getattr(args, "norm", None) or bundle.threat.norm).lower(), args.robustbench_dir)
    elif args.model.startswith("timm:"):
        model, source = M.from_timm(args.model.split(":", 1)[1], args.weights, model_args=_model_args(args.model_arg),
                                    normalization=args.weights_normalization, **shape)
    elif args.model.rpartition(":")[0].endswith(".py"):
        model, source = M.from_file(args.model, args.weights, allow_code=args.allow_code, model_args=_model_args(args.model_arg), **shape)
    else:
        model, source = M.from_registry(args.model, args.weights, model_args=_model_args(args.model_arg),
                                        layout=args.weights_layout, normalization=args.weights_normalization, **shape)
    return model, source, bundle


def run(args: argparse.Namespace) -> int:
    from rfbench.attacks.spec import check_specs
    from rfbench.benchmark.eval import EvalConfig, evaluate, markdown_table
    from rfbench.benchmark.eval.shard import ShardsIncomplete
    from rfbench.benchmark.train.runtime import resolve_device

    cfg = resolve_config(EvalConfig, args, args.config, [])
    if cfg.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    check_specs(cfg.attacks)
    shard = shard_of(args)
    out = Path(args.out) if args.out is not None else (Path(args.run) / f"eval-{args.which}" if args.run else Path("runs") / "eval")
    if args.executor == "ray" and shard is None:
        run_ray_shards(args, out, _shard_task, PATH_ARGS, "eval")
        args.merge = True
        shard = shard_of(args)
    device = resolve_device(cfg.device)
    if (on_rank := rank_device(device, shard)) is not None:
        cfg.device, device = on_rank, resolve_device(on_rank)
    model, source, bundle = _load_model(args, device)
    from rfbench.core.io.lock import exclusive_dir

    locked = shard.directory(out) if shard is not None and not shard.merging else out
    try:
        with exclusive_dir(locked, "evaluation directory"):
            result = evaluate(model, bundle, cfg, out, source=source, shard=shard)
    except ShardsIncomplete as exc:
        if shard is None or shard.merging:
            raise
        print(f"{shard.name} finished in {locked}/; {exc}", file=sys.stderr)
        return 0
    print(markdown_table(result))
    print(f"results in {out}/ (result.json, per_class.csv, flags.npz{', plots' if cfg.plot else ''})", file=sys.stderr)
    if args.strict and result["checks"]["overall"] != "pass":
        from rfbench.benchmark.eval.summary_line import checks_text

        print(f"rfbench: {checks_text(result['checks'])} (--strict: exit status 1)", file=sys.stderr)
        return 1
    return 0


#: the arguments holding paths (made absolute for Ray tasks on other nodes)
PATH_ARGS = ("out", "run", "weights", "data_root", "config", "robustbench_dir")


def _shard_task(args: argparse.Namespace, k: int, n: int) -> str:
    """One Ray task of ``--shards N --executor ray``: shard ``k`` of ``n`` (its merge waits for the driver)."""
    from rfbench.benchmark.eval.shard import ShardsIncomplete

    ns = argparse.Namespace(**{**vars(args), "shard": f"{k}/{n}", "executor": "local", "merge": False})
    try:
        run(ns)
    except ShardsIncomplete:
        pass
    return f"shard-{k}-of-{n}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter

    p = sub.add_parser("eval", help="per-class robustness of a model under attacks", description=__doc__,
                       epilog=EPILOG, formatter_class=HelpFormatter)
    S = argparse.SUPPRESS
    src = p.add_argument_group("model (one of --run or --model)")
    src.add_argument("--run-dir", "--run", dest="run", metavar="DIR",
                     help="run directory written by `rfbench train` (under torchrun write --run-dir: torchrun's own "
                          "parser takes --run for its --run-path)")
    src.add_argument("--which", default="best", help="checkpoint of the run: best (selected on validation), last, or an extra model")
    src.add_argument("--model", metavar="NAME", help="registered architecture (with --weights), timm:NAME (with local --weights; "
                     "needs the timm extra), path/to/file.py:factory (EXECUTES that file; needs --allow-code), "
                     "or robustbench:<ModelName>. Every model takes images in [0,1]")
    src.add_argument("--weights", metavar="FILE", help="checkpoint (.pt loaded with weights_only, or .safetensors)")
    src.add_argument("--weights-layout", default="auto", choices=["auto", "rfbench", "kuangliu", "robustbench", "trades"],
                     help="key layout of --weights for a registered model: rfbench's own, kuangliu/pytorch-cifar ResNet-18 "
                          "(also RobustBench/AutoAttack), robustbench (ResNet-18, Rice et al. PreAct-ResNet-18, WideResNet), "
                          "trades (yaodongyu/TRADES WideResNet-34-10/28-10); auto detects it from the keys")
    src.add_argument("--weights-normalization", default="auto", choices=["auto", "identity", "dataset"],
                     help="input normalisation of a foreign checkpoint. Every rfbench model takes images in [0,1] and "
                          "normalises inside. auto: rfbench checkpoints carry their own; kuangliu/robustbench/trades "
                          "layouts get identity (those models take unnormalised [0,1] images; kuangliu's training script "
                          "normalises outside the model, so use 'dataset' for its checkpoints); timm:NAME gets timm's "
                          "pretrained_cfg mean/std. identity: none; dataset: the dataset's mean/std")
    src.add_argument("--robustbench-dir", metavar="DIR", default="models",
                     help="robustbench's model directory: a zoo model's weights are DIR/<dataset>/<Linf|L2>/<Name>.pt, "
                          "downloaded there unless present (then no network is needed) [default: models]")
    src.add_argument("--allow-code", action="store_true", help="allow --model file.py:factory, and a file.py:Class defense named in the "
                     "--run directory's config.yaml, to run the Python code in that file")
    src.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="keyword argument of the model factory (repeatable)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", help="dataset name (default for --run: the run's dataset)")
    data.add_argument("--data-root", metavar="DIR", help="directory holding the dataset files")
    data.add_argument("--download", action="store_true", help="let torchvision download missing files")
    data.add_argument("--n-per-class", dest="n_per_class", type=int, default=S, metavar="N",
                      help="evaluate N test images per class (stratified, deterministic) instead of the whole test set")
    atk = p.add_argument_group("attacks and threat model")
    atk.add_argument("--attack", dest="attacks", action="append", default=S, metavar="SPEC", help="attack spec (repeatable; see below)")
    atk.add_argument("--t-sweep", dest="t_sweep", type=_t_values, default=S, metavar="T1,T2,...",
                     help="add temperature-pgd at each T (e.g. 0.1,0.5,1,2,5) and report the strongest T")
    atk.add_argument("--eps", type=_number, default=S, help="radius for every attack, e.g. 8/255 (default: the dataset's protocol)")
    atk.add_argument("--norm", choices=["linf", "l2"], default=S, help="norm for every attack (default: the dataset's protocol)")
    atk.add_argument("--autoattack-scope", dest="autoattack_scope", choices=["survivors", "all"], default=S,
                     help="run AutoAttack on the points still robust after the other attacks (default), or on all")
    run_g = p.add_argument_group("execution and output")
    run_g.add_argument("--config", metavar="FILE.yaml", help="YAML mapping of these settings (attacks: [specs], eps, n_per_class, ...)")
    run_g.add_argument("--batch-size", dest="batch_size", type=int, default=S, help="evaluation batch size [default: 256]")
    run_g.add_argument("--device", default=S, help="auto, cpu, cuda or cuda:N [default: auto]")
    run_g.add_argument("--amp", choices=["off", "bf16"], default=S, help="bf16 autocast for attack steps (predictions stay fp32) [default: off]")
    run_g.add_argument("--channels-last", dest="channels_last", choices=["auto", "on", "off"], default=S, help="channels-last memory format for the attacks: on, off, or auto "
                       "[default: auto = on for CUDA]")
    run_g.add_argument("--seed", type=int, default=S, help="seed of the attacks' randomness [default: 0]")
    run_g.add_argument("--out", metavar="DIR", help="output directory [default: RUN/eval-WHICH, or runs/eval]")
    run_g.add_argument("--plot", action="store_true", default=S, help="write per_class.png and confusion_flow.png")
    run_g.add_argument("--overwrite", action="store_true", default=S, help="replace the evaluation in --out by a new one (the old files stay until the new one is complete)")
    run_g.add_argument("--quiet", action="store_true", default=S, help="no progress bar or info messages")
    run_g.add_argument("--strict", action="store_true", help="exit with status 1 when a sanity check of the result "
                       "fails or warns (the table's last line names it; result.json's 'checks' has the details)")
    run_g.add_argument("--progress-every", dest="progress_every", type=float, default=S, metavar="S",
                       help="when stderr is not a terminal, log progress (attack, images/s, ETA) every S seconds; "
                            "0 = only at the end [default: 30]")
    add_shard_arguments(p, "the evaluation", "result.json")
    p.set_defaults(func=run)
