"""Experiment loggers: TensorBoard event files and MLflow's file store read back equal ``log.jsonl``."""

import importlib.util
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from rfbench.benchmark.cli import build_parser, main
from rfbench.benchmark.cli.config_args import resolve_config
from rfbench.benchmark.train import loggers as L
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.trainer import train
from rfbench.core.errors import ConfigError

HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
TINY: dict[str, Any] = dict(dataset="fashion-mnist", model="smallcnn", max_train_samples=320, val_per_class=10, steps=1,
            val_steps=1, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=0.0, device="cpu", seed=3)


def _parse(argv):
    args = build_parser().parse_args(["train", *argv])
    return resolve_config(TrainConfig, args, args.config, args.overrides)


def test_logger_flag_is_a_repeatable_comma_list_validated_by_choices():
    assert _parse([]).logger == []
    assert _parse(["--logger", "tensorboard,mlflow", "--logger", "wandb"]).logger == ["tensorboard", "mlflow", "wandb"]
    with pytest.raises(ConfigError, match="'logger' must be one of tensorboard, mlflow, wandb"):
        _parse(["--logger", "tensorbored"])


def test_epoch_scalars_of_a_hand_made_record():
    rec = {"epoch": 3, "lr": 0.1, "loss": 1.5, "terms": {"kl": 0.25}, "train_robust_acc": [0.5, 0.25],
           "val_clean_acc": [1.0, 0.75], "val_robust_acc": [0.5, None], "val_clean_mean": 0.875,
           "val_robust_mean": 0.5, "val_robust_worst": 0.5, "select_score": 1.0, "skipped_batches": 0,
           "defense": {"weights": [0.4, 0.6], "note": "text", "flag": True}, "seconds": 2.0}
    s = L.epoch_scalars(rec, ["T-shirt/top", "Bag"])
    assert s == {"lr": 0.1, "loss": 1.5, "select_score": 1.0, "skipped_batches": 0.0, "terms/kl": 0.25,
                 "val/clean_mean": 0.875, "val/robust_mean": 0.5, "val/robust_worst": 0.5,
                 "train/robust_acc/0_T-shirt_top": 0.5, "train/robust_acc/1_Bag": 0.25,
                 "val/clean_acc/0_T-shirt_top": 1.0, "val/clean_acc/1_Bag": 0.75,
                 "val/robust_acc/0_T-shirt_top": 0.5, "defense/weights/0_T-shirt_top": 0.4,
                 "defense/weights/1_Bag": 0.6}
    assert L.final_table(rec, ["a", "b"]) == [["a", 0.5, 1.0, 0.5], ["b", 0.25, 0.75, None]]


def test_missing_package_is_a_one_line_error_naming_the_extra(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(L.LoggerUnavailableError) as err:
        L.ExperimentLoggers(["tensorboard", "wandb"], tmp_path, ["a"], {})
    assert str(err.value) == "--logger wandb needs the 'wandb' package: pip install 'rfbench[wandb]'"
    # the CLI: exit 2, one line, before any data is loaded or directory written
    out = tmp_path / "run"
    assert main(["train", "--logger", "wandb", "--dataset", "no-such-dataset", "--out", str(out)]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert lines and "pip install 'rfbench[wandb]'" in lines[-1]
    assert not (out / "log.jsonl").exists()


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """1 epoch, then resumed to 2 epochs, logging to TensorBoard (and MLflow when installed)."""
    names = ["tensorboard"] + (["mlflow"] if HAVE_MLFLOW else [])
    out = tmp_path_factory.mktemp("log") / "run"
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        train(TrainConfig(**TINY, epochs=1, out=str(out), logger=names), quiet=True)
        train(TrainConfig(**TINY, epochs=2, out=str(out), logger=names), quiet=True)  # resumes at epoch 2
    finally:
        mp.undo()
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    return out, records


CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _expected(records):
    """tag -> [(step, value)] straight from log.jsonl, independently of epoch_scalars."""
    exp = {}
    for r in records:
        for i, c in enumerate(CLASSES):
            key = f"{i}_{c.replace('/', '_').replace(' ', '_')}"
            exp.setdefault(f"val/robust_acc/{key}", []).append((r["epoch"], r["val_robust_acc"][i]))
            exp.setdefault(f"val/clean_acc/{key}", []).append((r["epoch"], r["val_clean_acc"][i]))
            exp.setdefault(f"train/robust_acc/{key}", []).append((r["epoch"], r["train_robust_acc"][i]))
        exp.setdefault("lr", []).append((r["epoch"], r["lr"]))
        exp.setdefault("loss", []).append((r["epoch"], r["loss"]))
    return exp


def test_tensorboard_event_files_hold_the_per_class_records(resumed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, records = resumed_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag, want in _expected(records).items():
        assert tag in tags, tag
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [1, 2], (tag, got)  # the resume did not duplicate a step
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7), tag
    assert acc.Scalars("summary/best_epoch")[-1].value == json.loads((out / "summary.json").read_text())["best_epoch"]
    text = acc.Tensors("final_val_per_class/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| Ankle boot |" in text and f"{records[-1]['val_robust_acc'][9]:.4f}" in text


@pytest.mark.skipif(not HAVE_MLFLOW, reason="mlflow not installed (pip install 'rfbench[mlflow]')")
def test_mlflow_file_store_holds_the_per_class_records(resumed_run):
    from mlflow.tracking import MlflowClient

    out, records = resumed_run
    client = MlflowClient(tracking_uri=L.local_mlflow_uri(out))
    run_id = json.loads((out / "loggers.json").read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and json.loads(run.data.params["model"]) == "smallcnn"
    for tag, want in _expected(records).items():
        hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, tag))
        assert [s for s, _ in hist] == [1, 2], (tag, hist)
        assert [v for _, v in hist] == pytest.approx([v for _, v in want], rel=1e-9), tag
    artifacts = Path(urlparse(run.info.artifact_uri).path)
    assert artifacts.is_relative_to((out / "mlruns").resolve())
    table = json.loads((artifacts / "final_val_per_class.json").read_text())
    assert table["columns"][:4] == L.FINAL_COLUMNS
    assert [row[3] for row in table["data"]] == pytest.approx(records[-1]["val_robust_acc"])

