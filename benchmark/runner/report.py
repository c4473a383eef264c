"""The run-level outputs of ``rfbench run``: ``result.json`` (schema ``rfbench.run/1``), ``report.md`` and plots.

``result.json`` gathers, for every evaluated checkpoint, the per-class vectors
and summaries of its ``eval-<checkpoint>/result.json`` (schema
``rfbench.result/2``, which stays the full record), the training summaries,
the cost, the stage timings and the provenance::

    {"schema": "rfbench.run/1", "name": ..., "defense": ..., "seed": ..., "dataset": ..., "model": ...,
     "config": {resolved run config}, "train": {...}, "pretrain": {...} | null,
     "checkpoints": {"best": {"result": "eval-best/result.json", "epoch": 2, "classes": [...],
                              "n_per_class": [...], "attacks": [...], "worst_case_over": [...],
                              "per_class": {...}, "summary": {...}, "checks": "pass", ...}, "last": {...}},
     "cost": {"accelerator": "cpu", "device": ..., "train_seconds": ..., "eval_seconds": ..., "gpu_hours": null,
              "cpu_threads": {"train": [1], "eval": [1]}},
     "stages": {...}, "provenance": {...}}
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rfbench.benchmark.eval.provenance import defense_provenance, git_sha, package_versions, portable_command
from rfbench.benchmark.eval.result import EvalResult
from rfbench.core.io import atomic_write_json, atomic_write_text, read_json
from rfbench.core.perclass import pct, to_percent

RUN_SCHEMA = "rfbench.run/1"
CHECKPOINT_KEYS = ("classes", "n_per_class", "worst_case_over", "per_class", "summary", "robustbench", "inventions",
                   "threat", "flags_file")


def checkpoint_block(result: Mapping[str, Any], result_rel: str) -> dict[str, Any]:
    """What the run result keeps of one checkpoint's ``rfbench.result/2`` (read as an :class:`EvalResult`)."""
    block = {"result": result_rel, **{k: result.get(k) for k in CHECKPOINT_KEYS}}
    block["attacks"] = [a["label"] for a in result["attacks"]]
    block["flags_file"] = str(Path(result_rel).parent / result["flags_file"])
    model = result.get("provenance", {}).get("model", {})
    block["epoch"] = model.get("epoch")
    block["selected_by"] = model.get("selected_by")
    block["checks"] = result["checks"]["overall"]
    block["eval_seconds"] = result.get("provenance", {}).get("wall_time_s")
    block["device"] = result.get("provenance", {}).get("device")
    block["cpu_threads"] = (result.get("provenance", {}).get("cpu_threads") or {}).get("threads")
    return block


def _train_summary(train_dir: Path) -> dict[str, Any] | None:
    path = train_dir / "summary.json"
    return read_json(path) if path.exists() else None


def run_threads(summaries: list[dict[str, Any] | None], blocks: dict[str, Any]) -> dict[str, list[int]]:
    """The CPU intra-op thread counts a run trained (and pretrained) and evaluated with; they set the float
    reduction order, so a track fixes them (``protocol.threads``): ``{"train": [...], "eval": [...]}``, the distinct counts."""
    trained = sorted({n for s in summaries for n in (s or {}).get("cpu_threads", [])})
    evals = sorted({b["cpu_threads"] for b in blocks.values() if b.get("cpu_threads") is not None})
    return {"train": trained, "eval": evals}


def build_run_result(run_dir: Path, data: dict[str, Any], checkpoints: list[str], stages: dict[str, Any]) -> dict[str, Any]:
    """The ``rfbench.run/1`` dictionary of a run whose training and evaluations are done."""
    train = _train_summary(run_dir / "train")
    pretrain = _train_summary(run_dir / "pretrain")
    blocks = {which: checkpoint_block(EvalResult.load(run_dir / f"eval-{which}" / "result.json"), f"eval-{which}/result.json")
              for which in checkpoints}
    device = (train or {}).get("device", "cpu")
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    train_s = sum((s or {}).get("train_seconds_total", 0.0) for s in (train, pretrain))
    eval_s = sum(b.get("eval_seconds") or 0.0 for b in blocks.values())
    cfg = data["train"]
    return {
        "schema": RUN_SCHEMA,
        "name": data.get("name"),
        "defense": cfg.get("defense"),
        "defense_args": cfg.get("defense_args", {}),
        "fidelity": cfg.get("fidelity", "paper"),
        "defense_provenance": defense_provenance(cfg["defense"], cfg.get("defense_args")) if cfg.get("defense") else None,
        "seed": cfg.get("seed"),
        "dataset": (train or {}).get("dataset", cfg.get("dataset")),
        "model": cfg.get("model"),
        "config": data,
        "train": train,
        "pretrain": pretrain,
        "checkpoints": blocks,
        "cost": {"accelerator": accelerator, "device": next(iter(blocks.values())).get("device") if blocks else device,
                 "train_seconds": round(train_s, 2), "eval_seconds": round(eval_s, 2),
                 "gpu_hours": round((train_s + eval_s) / 3600, 4) if accelerator == "cuda" else None,
                 "cpu_threads": run_threads([train, pretrain], blocks) if accelerator == "cpu" else None},
        "stages": stages,
        "provenance": {"code": git_sha(), "packages": package_versions(), "command": portable_command(sys.argv),
                       "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }


def summary_frame(run: dict[str, Any]) -> pd.DataFrame:
    """One row per checkpoint: epoch, clean mean/worst, each attack's mean, worst-case mean/worst/gap (fractions;
    :func:`percent_markdown` renders them)."""
    rows = []
    for which, b in run["checkpoints"].items():
        s = b["summary"]
        row = {"checkpoint": which, "epoch": b.get("epoch"), "clean": s["clean"]["mean"], "clean worst": s["clean"]["worst"]}
        row.update({a: s[a]["mean"] for a in b["attacks"]})
        wc = s["worst_case"]
        row.update({"robust (worst case)": wc["mean"], "robust worst class": wc["worst"],
                    "weakest class": b["classes"][wc["worst_class"]], "gap": wc["gap"], "checks": b["checks"]})
        rows.append(row)
    return pd.DataFrame(rows)


PERCENT_EXEMPT = ("checkpoint", "epoch", "class", "weakest class", "checks")


def percent_markdown(df: pd.DataFrame) -> str:
    """A frame of fractions as a markdown table in percent (through :func:`~rfbench.core.perclass.pct`)."""
    shown, align = df.copy(), []
    for c in shown.columns:
        numeric = pd.api.types.is_numeric_dtype(shown[c])
        if c not in PERCENT_EXEMPT and numeric:
            shown[c] = [pct(v) for v in shown[c]]
        align.append("right" if numeric else "left")
    return shown.to_markdown(index=False, colalign=align)


def per_class_frame(run: dict[str, Any]) -> pd.DataFrame:
    """Per-class clean and worst-case robust accuracy (fractions; NaN for an empty class) of every evaluated checkpoint."""
    first = next(iter(run["checkpoints"].values()))
    df = pd.DataFrame({"class": first["classes"]})
    for which, b in run["checkpoints"].items():
        df[f"clean ({which})"] = np.array(b["per_class"]["clean"], dtype=float)
        df[f"robust ({which})"] = np.array(b["per_class"]["worst_case"], dtype=float)
    return df


def markdown_report(run: dict[str, Any]) -> str:
    """``report.md``: what ran, the summary per checkpoint and the per-class table."""
    cost = run["cost"]
    head = (f"# {run['name']}: {run['defense']} on {run['dataset']} ({run['model']}), seed {run['seed']}\n\n"
            f"Trained {cost['train_seconds'] / 60:.1f} min, evaluated {cost['eval_seconds'] / 60:.1f} min on {cost['device']}. "
            "Accuracies in percent; robust = worst case over the attacks (a sample counts only if every attack failed).\n")
    parts = [head, "## Summary (%)\n", percent_markdown(summary_frame(run)),
             "\n## Per class (%)\n", percent_markdown(per_class_frame(run)), ""]
    return "\n".join(parts)


def plot_run(run: dict[str, Any], run_dir: Path) -> list[Path]:
    """``per_class.png`` (clean and robust per class, every checkpoint) and ``training.png`` (validation curves).

    Class and defense names are drawn as plain text, never parsed as markup.
    """
    from rfbench.benchmark.eval.plots import plain_text

    with plain_text():
        return _plot_run(run, run_dir)


def _plot_run(run: dict[str, Any], run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from rfbench.benchmark.eval.plots import save_figure

    paths = []
    df = per_class_frame(run)
    names = [c for c in df.columns if c != "class"]
    x = np.arange(len(df))
    w = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(df) + 2), 4.0))
    for i, col in enumerate(names):
        hatch = "//" if col.startswith("robust") else None
        ax.bar(x + (i - (len(names) - 1) / 2) * w, to_percent(df[col]), w, label=col, hatch=hatch, color=f"C{i // 2}",
               alpha=0.55 if col.startswith("clean") else 0.95, edgecolor="black", linewidth=0.3)
    ax.set_xticks(x, df["class"], rotation=35, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 104)
    ax.set_title(f"{run['defense']} on {run['dataset']}: clean and worst-case robust accuracy per class", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    paths.append(save_figure(fig, run_dir / "per_class.png", dpi=120))
    plt.close(fig)  # pyplot keeps every figure it made until closed
    log_path = run_dir / "train" / "log.jsonl"
    if log_path.exists():
        records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        if records:
            ep = [r["epoch"] for r in records]
            fig, ax = plt.subplots(figsize=(6.0, 3.6))
            for key, lab in (("val_clean_mean", "val clean (mean)"), ("val_robust_mean", "val robust (mean)"),
                             ("val_robust_worst", "val robust (worst class)")):
                ax.plot(ep, to_percent([r[key] for r in records]), marker="o", label=lab)
            best = run["checkpoints"].get("best", {}).get("epoch")
            if best:
                ax.axvline(best, color="grey", ls="--", lw=0.8, label=f"best epoch ({best})")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel("accuracy (%)")
            ax.set_title("validation accuracy during training", fontsize=9)
            ax.legend(fontsize=7, frameon=False)
            ax.grid(alpha=0.3)
            paths.append(save_figure(fig, run_dir / "training.png", dpi=120))
            plt.close(fig)  # pyplot keeps every figure it made until closed
    return paths


def write_run_outputs(run: dict[str, Any], run_dir: Path, plot: bool = True) -> None:
    """``result.json`` last, so its presence means the run is complete."""
    atomic_write_text(run_dir / "report.md", markdown_report(run))
    if plot:
        plot_run(run, run_dir)
    atomic_write_json(run_dir / "result.json", run)
