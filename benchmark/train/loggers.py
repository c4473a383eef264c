"""Experiment loggers: TensorBoard, MLflow and Weights & Biases, as optional, lazily imported backends.

``rfbench train --logger tensorboard,mlflow`` (config key ``logger``) sends each
epoch's record (the ``log.jsonl`` line written by ``Trainer._record_epoch``) and,
at the end, the summary and the final per-class validation table to every
selected backend.  Every backend sees the same flat scalars
(:func:`epoch_scalars`), accuracies as fractions, with the epoch (1-based, as in
``log.jsonl``) as the step, so a resumed run logs each epoch under the same
step again instead of appending new ones.  Only rank 0 logs.

Backends and where they write (offline by default):

- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` into ``RUN_DIR/tensorboard``
  (extra ``rfbench[tensorboard]``); a resumed run purges events from the resumed epoch on.
- ``mlflow``: a local store, ``sqlite:///RUN_DIR/mlflow.db`` with artifacts in ``RUN_DIR/mlruns``
  (MLflow 3 refuses its old ``./mlruns`` file backend by default, so the local store is MLflow's
  own SQLite backend), unless ``MLFLOW_TRACKING_URI`` is set; experiment ``MLFLOW_EXPERIMENT_NAME``
  (default ``rfbench``) (extra ``rfbench[mlflow]``).
- ``wandb``: ``mode="offline"`` unless ``WANDB_MODE`` is set, ``dir=RUN_DIR``, project
  ``WANDB_PROJECT`` (default ``rfbench``) (extra ``rfbench[wandb]``).

The run ids of MLflow and W&B are kept in ``RUN_DIR/loggers.json`` so a resumed
run continues the same tracked run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from rfbench.core.errors import RfbenchError

IDS = "loggers.json"


class LoggerUnavailableError(RfbenchError):
    """A selected logger's package is not installed."""


class ExperimentLogger(Protocol):
    """What a backend implements.  ``step`` is the 1-based epoch."""

    def log_scalars(self, scalars: dict[str, float], step: int) -> None: ...

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...

    def log_summary(self, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _safe(name: str) -> str:
    """A class name usable in every backend's metric keys (MLflow allows ``[\\w\\-. /]``)."""
    return re.sub(r"[^\w\-.]+", "_", str(name)).strip("_") or "class"


def class_keys(classes: list[str]) -> list[str]:
    """``["00_T-shirt_top", "01_Trouser", ...]``: index first (unique, sorted), then the readable name."""
    width = len(str(max(len(classes) - 1, 0)))
    return [f"{i:0{width}d}_{_safe(c)}" for i, c in enumerate(classes)]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def epoch_scalars(record: dict[str, Any], classes: list[str]) -> dict[str, float]:
    """The flat scalars of one ``log.jsonl`` record (fractions, as in the record).

    ``lr``, ``loss``, ``terms/NAME``, ``val/clean_mean``, ``val/robust_mean``,
    ``val/robust_worst``, ``select_score``, ``skipped_batches``, per class
    ``train/robust_acc/CLASS``, ``val/clean_acc/CLASS``, ``val/robust_acc/CLASS``
    (CLASS from :func:`class_keys`), and the defense's numeric extras as
    ``defense/KEY`` (lists of one value per class as ``defense/KEY/CLASS``, other
    lists by index).  Missing values (``None``) are left out.
    """
    keys = class_keys(classes)
    out: dict[str, float] = {}

    def put(name: str, v: Any) -> None:
        if (x := _number(v)) is not None:
            out[name] = x

    for k in ("lr", "loss", "select_score", "skipped_batches"):
        put(k, record.get(k))
    for k, v in (record.get("terms") or {}).items():
        put(f"terms/{k}", v)
    for k, name in (("val_clean_mean", "val/clean_mean"), ("val_robust_mean", "val/robust_mean"),
                    ("val_robust_worst", "val/robust_worst")):
        put(name, record.get(k))
    for k, name in (("train_robust_acc", "train/robust_acc"), ("val_clean_acc", "val/clean_acc"),
                    ("val_robust_acc", "val/robust_acc")):
        for key, v in zip(keys, record.get(k) or []):
            put(f"{name}/{key}", v)

    def extras(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, w in v.items():
                extras(f"{prefix}/{_safe(k)}", w)
        elif isinstance(v, (list, tuple)):
            names = keys if len(v) == len(keys) else [str(i) for i in range(len(v))]
            for n, w in zip(names, v):
                extras(f"{prefix}/{n}", w)
        else:
            put(prefix, v)

    extras("defense", record.get("defense") or {})
    return out


FINAL_COLUMNS = ["class", "train_robust_acc", "val_clean_acc", "val_robust_acc"]


def final_table(record: dict[str, Any], classes: list[str]) -> list[list[Any]]:
    """The per-class validation table of one epoch's record: class, train robust, val clean, val robust (fractions)."""
    cols = [record.get(k) or [None] * len(classes) for k in FINAL_COLUMNS[1:]]
    return [[c, *(col[i] for col in cols)] for i, c in enumerate(classes)]


def _markdown(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class _Ids:
    """``RUN_DIR/loggers.json``: backend run ids, so a resumed run continues the same tracked run."""

    def __init__(self, out: Path):
        self.path = out / IDS

    def get(self, name: str) -> str | None:
        try:
            return json.loads(self.path.read_text()).get(name)
        except (OSError, ValueError):
            return None

    def set(self, name: str, value: str) -> None:
        from rfbench.core.io import atomic_write_json

        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        data[name] = value
        atomic_write_json(self.path, data)


class TensorBoardLogger:
    """``SummaryWriter(RUN_DIR/tensorboard, purge_step=first_step)``: scalars, tables as markdown text."""

    def __init__(self, out: Path, first_step: int, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=first_step)
        if first_step <= 1:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.writer.add_text(name, _markdown(columns, rows), step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=1, default=str) + "\n```", 0)

    def close(self) -> None:
        self.writer.close()


def local_mlflow_uri(out: Path) -> str:
    """The default MLflow tracking URI of a run directory: its own SQLite store."""
    return "sqlite:///" + str((Path(out) / "mlflow.db").resolve())


class MlflowLogger:
    """An MLflow run in ``sqlite:///RUN_DIR/mlflow.db`` (or ``MLFLOW_TRACKING_URI``), through ``MlflowClient``."""

    def __init__(self, out: Path, first_step: int, config: dict[str, Any]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.client = MlflowClient(tracking_uri=uri or local_mlflow_uri(out))
        self.ids = _Ids(out)
        run_id = self.ids.get("mlflow")
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "rfbench")
            exp = self.client.get_experiment_by_name(name)
            artifacts = None if uri else (out / "mlruns").resolve().as_uri()
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=artifacts)
            run_id = self.client.create_run(exp_id, run_name=out.name).info.run_id
            self.ids.set("mlflow", run_id)
            params = [Param(k, json.dumps(v, default=str)[:500]) for k, v in sorted(config.items())]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self.run_id = run_id

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.client.log_dict(self.run_id, {"columns": columns, "data": rows}, f"{name}.json")
        self.client.log_text(self.run_id, _markdown(columns, rows) + "\n", f"{name}.md")

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, json.loads(json.dumps(summary, default=str)), "summary.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbLogger:
    """A W&B run, ``mode="offline"`` unless ``WANDB_MODE`` says otherwise, files under ``RUN_DIR/wandb``."""

    def __init__(self, out: Path, first_step: int, config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        ids = _Ids(out)
        run_id = ids.get("wandb") or wandb.util.generate_id()
        ids.set("wandb", run_id)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rfbench"), dir=str(out), id=run_id,
                              resume="allow", name=out.name, config=config,
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(dict(scalars, epoch=step), step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(json.loads(json.dumps(summary, default=str)))

    def close(self) -> None:
        self.run.finish()


# name -> (module that must be importable, pip extra, factory(out, first_step, config))
LOGGERS: dict[str, tuple[str, str, Callable[[Path, int, dict[str, Any]], ExperimentLogger]]] = {
    "tensorboard": ("tensorboard", "tensorboard", TensorBoardLogger),
    "mlflow": ("mlflow", "mlflow", MlflowLogger),
    "wandb": ("wandb", "wandb", WandbLogger),
}


def check_available(name: str) -> None:
    """Raise the one-line :class:`LoggerUnavailableError` if ``name``'s package is missing (without importing it)."""
    module, extra, _ = LOGGERS[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise LoggerUnavailableError(f"--logger {name} needs the '{module}' package: pip install 'rfbench[{extra}]'")


class ExperimentLoggers:
    """The selected backends of one run, opened on the first epoch logged (its epoch is TensorBoard's purge step).

    Missing packages are reported when this is built, before any training.
    ``log_epoch`` takes the ``log.jsonl`` record; ``finish`` the summary and
    the history (the last epoch's per-class validation table, and the best
    epoch's, are logged as tables).
    """

    def __init__(self, names: list[str], out: Path, classes: list[str], config: dict[str, Any]):
        for name in names:
            check_available(name)
        self.names = list(dict.fromkeys(names))
        self.out, self.classes, self.config = Path(out), list(classes), config
        self.backends: list[ExperimentLogger] | None = None

    def _open(self, first_step: int) -> list[ExperimentLogger]:
        if self.backends is None:
            self.backends = [LOGGERS[n][2](self.out, first_step, self.config) for n in self.names]
        return self.backends

    def log_epoch(self, record: dict[str, Any]) -> None:
        if not self.names:
            return
        step = int(record["epoch"])
        scalars = epoch_scalars(record, self.classes)
        for b in self._open(step):
            b.log_scalars(scalars, step)

    def finish(self, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if not self.names or not history:
            return
        last = history[-1]
        best = next((r for r in history if r["epoch"] == summary.get("best_epoch")), last)
        scalars = {k: x for k, v in summary.items() if (x := _number(v)) is not None and math.isfinite(x)}
        scalars.update({f"last/{k}": x for k, v in (summary.get("last") or {}).items()
                        if (x := _number(v)) is not None})
        step = int(last["epoch"])
        for b in self._open(step + 1):  # opened here only if no epoch ran in this session: nothing to purge
            b.log_scalars({f"summary/{k}": v for k, v in scalars.items()}, step)
            b.log_table("final_val_per_class", FINAL_COLUMNS, final_table(last, self.classes), step)
            b.log_table("best_val_per_class", FINAL_COLUMNS, final_table(best, self.classes), int(best["epoch"]))
            b.log_summary(summary)
        self.close()

    def close(self) -> None:
        for b in self.backends or []:
            b.close()
        self.backends = None


__all__ = ["ExperimentLogger", "ExperimentLoggers", "LOGGERS", "LoggerUnavailableError", "epoch_scalars",
           "class_keys", "final_table", "check_available"]
