"""A per-class eps sweep of one model with the Python API: how each class's robust accuracy falls with eps.

    python examples/sweep.py --weights w.pt --model smallcnn --model-arg width=0.25 --eps 0.02,0.05,0.1

Each eps is one ``rfbench.evaluate`` call (PGD and CW at that radius); the
result is a classes × eps table of worst-case robust accuracy, and the worst
class at each eps.  To sweep *training* runs (defenses × datasets × seeds),
use ``rfbench sweep GRID.yaml`` instead (``rfbench sweep --help``).
"""

from __future__ import annotations

import argparse

import pandas as pd

import rfbench
from rfbench.core.io.checkpoint import load_checkpoint, load_state_dict_into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--eps", default="0.02,0.05,0.1", help="comma-separated radii (fractions of the [0,1] range)")
    p.add_argument("--n-per-class", type=int, default=50)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    data = rfbench.load_dataset(args.dataset, test_only=True)
    kwargs = {k: float(v) if v.replace(".", "", 1).isdigit() else v for k, v in (a.split("=", 1) for a in args.model_arg)}
    model = rfbench.create_model(args.model, data.num_classes, data.in_channels, data.mean, data.std, **kwargs)
    load_state_dict_into(model, load_checkpoint(args.weights), source=args.weights)

    table, worst = {}, []
    for eps in (float(e) for e in args.eps.split(",")):
        r = rfbench.evaluate(model, data.test.x, data.test.y, eps=eps, attacks=["pgd:steps=20", "cw:steps=20"],
                             classes=data.classes, n_per_class=args.n_per_class, device=args.device, quiet=True)
        table[f"eps={eps:g}"] = r.per_class.set_index("class")["worst_case"]
        w = r.worst_case
        worst.append({"eps": eps, "mean": r.robust_accuracy, "worst class": w["class"], "worst": w["accuracy"],
                      "worst 95% CI": w["ci95"]})
    print((100 * pd.DataFrame(table)).round(1).to_markdown())
    print(pd.DataFrame(worst).to_markdown(index=False))


if __name__ == "__main__":
    main()
