"""Summarise several rfbench result.json files as one markdown table (used for the benchmark notes).

    python scripts/summarize_results.py runs/fmnist-lt50/*/eval-lite/result.json
    python scripts/summarize_results.py --baseline runs/fmnist/trades/eval-lite/result.json runs/fmnist/*/eval-lite/result.json

Columns (percent): balanced clean, PGD-20 and worst-case (over all attacks in the file) accuracy,
worst class (worst-case), the head/middle/tail groups when the result has them, and DAFA's rho
(Lee et al., ICLR 2024) against ``--baseline`` for clean and worst-case accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tabulate import tabulate


def rho(model: dict, base: dict) -> float:
    """ρ = (worst_m − worst_b)/worst_b − (avg_b − avg_m)/avg_b (undefined when worst_b = 0)."""
    if base["worst"] == 0:
        return float("nan")
    return (model["worst"] - base["worst"]) / base["worst"] - (base["mean"] - model["mean"]) / base["mean"]


def row(path: Path, base: dict | None) -> dict:
    r = json.loads(path.read_text())
    s, classes = r["summary"], r["classes"]
    pgd = next((k for k in s if k.startswith("pgd-")), None)
    out = {
        "run": path.parent.parent.name + ("" if path.parent.name.startswith("eval") else f"/{path.parent.name}"),
        "clean": 100 * s["clean"]["mean"],
        "clean worst": 100 * s["clean"]["worst"],
        pgd or "pgd": 100 * s[pgd]["mean"] if pgd else float("nan"),
        "worst-case": 100 * s["worst_case"]["mean"],
        "worst-case worst": 100 * s["worst_case"]["worst"],
        "worst class": classes[s["worst_case"]["worst_class"]],
    }
    groups = (r.get("groups") or {}).get("worst_case", {})
    for g, v in groups.items():
        out[f"{g} (wc)"] = 100 * v
    if base is not None:
        out["rho clean"] = rho(s["clean"], base["clean"])
        out["rho robust"] = rho(s["worst_case"], base["worst_case"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--baseline", type=Path, help="result.json of the baseline for DAFA's rho")
    a = p.parse_args()
    base = json.loads(a.baseline.read_text())["summary"] if a.baseline else None
    rows = [row(r, base) for r in a.results]
    print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".1f"))


if __name__ == "__main__":
    main()
