"""Evaluate a checkpoint per class with rfbench's Python API (the same harness as ``rfbench eval``).

    python examples/evaluate_checkpoint.py --weights w.pt --model smallcnn --dataset fashion-mnist --n-per-class 100
    python examples/evaluate_checkpoint.py --weights w.pt --model smallcnn --model-arg width=0.25 --autoattack

The model is a registered architecture (``rfbench list models``) built with the
dataset's normalisation inside it, so it takes images in [0,1].  The command-line
equivalent is ``rfbench eval --model NAME --weights W --dataset D``.
"""

from __future__ import annotations

import argparse

import rfbench
from rfbench.core.io.checkpoint import load_checkpoint, load_state_dict_into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="state_dict (.pt, loaded with weights_only, or .safetensors)")
    p.add_argument("--model", default="smallcnn", help="registered architecture")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="e.g. width=0.25")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--eps", type=float, default=None, help="default: the dataset's protocol eps")
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--autoattack", action="store_true", help="add standard AutoAttack (slow on a CPU)")
    p.add_argument("--out", default=None, help="write result.json, tables and the flag file here (resumable)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    data = rfbench.load_dataset(args.dataset, test_only=True)  # an evaluation reads only the test split
    kwargs = {k: float(v) if v.replace(".", "", 1).isdigit() else v for k, v in (a.split("=", 1) for a in args.model_arg)}
    model = rfbench.create_model(args.model, data.num_classes, data.in_channels, data.mean, data.std, **kwargs)
    load_state_dict_into(model, load_checkpoint(args.weights), source=args.weights)

    eps = args.eps if args.eps is not None else data.threat.eps
    attacks = ["fgsm", f"pgd:steps={data.threat.eval_steps}", f"cw:steps={data.threat.eval_steps}"]
    report = rfbench.evaluate(model, data.test.x, data.test.y, eps=eps, attacks=attacks,
                              version="standard" if args.autoattack else None, classes=data.classes,
                              steps=data.threat.eval_steps, alpha=data.threat.eval_alpha * eps / data.threat.eps,
                              n_per_class=args.n_per_class, device=args.device, out=args.out,
                              dataset=args.dataset, source={"name": f"{args.model}:{args.weights}", "architecture": args.model,
                                                            "checkpoint": args.weights})
    print(report.to_markdown())
    print(report)


if __name__ == "__main__":
    main()
