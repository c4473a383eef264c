"""A calibrated model is evaluated like any other: `rfbench calibrate` output is a valid `rfbench eval --run` target."""

import json

import torch

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval.models import from_run
from rfbench.benchmark.train.config import TrainConfig
from rfbench.benchmark.train.trainer import train


def test_calibrate_then_eval_end_to_end(tmp_path):
    run = train(TrainConfig(dataset="fashion-mnist", model="smallcnn", model_kwargs={"width": 0.25},
                            max_train_samples=300, val_per_class=10, steps=2, val_steps=2, epochs=1,
                            optimizer="adam", lr=1e-3, weight_decay=0.0, device="cpu", out=str(tmp_path / "run")),
                quiet=True)
    calib = tmp_path / "calib"
    assert main(["calibrate", "--run", str(run), "--out", str(calib), "--device", "cpu", "--steps", "2",
                 "--targets", "2", "--rounds", "1"]) == 0
    model, source = from_run(calib, device="cpu")
    raw, _ = from_run(run, device="cpu")
    assert source["name"].endswith(":calibrated") and source["calibration"]["method"] == "bias"
    x = torch.rand(4, 1, 28, 28)
    bias = source["calibration"]["bias"]
    expected = raw(x) * torch.tensor(source["calibration"]["scale"]) + torch.tensor(bias)
    torch.testing.assert_close(model(x), expected)
    out = tmp_path / "eval"
    assert main(["eval", "--run", str(calib), "--n-per-class", "3", "--attack", "pgd:steps=2", "--device", "cpu",
                 "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["schema"] == "rfbench.result/2"
    assert "calibration" in json.dumps(result["provenance"])
