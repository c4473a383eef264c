"""Bad values that used to crash mid-run are one line (exit 2) before any work (issue list 8 of the fault hunt)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from rfbench.benchmark.cli import main

TRAIN = ["train", "--dataset", "fashion-mnist", "--max-train-samples", "40", "--val-per-class", "2", "--epochs", "1",
         "--steps", "1", "--val-steps", "1", "--batch-size", "20", "--device", "cpu", "--quiet"]
EVAL = ["eval", "--dataset", "fashion-mnist", "--n-per-class", "1", "--attack", "fgsm", "--device", "cpu", "--quiet"]


def one_line_error(argv, capsys, *want):
    """``main(argv)`` exits 2 with one ``rfbench: error:`` line holding every ``want``, and no traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    for w in want:
        assert w in lines[0], err
    return lines[0]


def test_lr_out_of_range(tmp_path, capsys):
    one_line_error([*TRAIN, "--lr", "1e39", "--out", str(tmp_path / "r")], capsys, "'lr' must be a number in [0, 10]")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override, want", [
    ("model_kwargs.width=-1", "negative dimension"),
    ("model_kwargs.depth=3", "unknown key(s) depth; it accepts: width, image_size"),
    ("model_kwargs.num_classes=3", "num_classes is set from the dataset"),
])
def test_model_kwargs_checked_before_training(override, want, tmp_path, capsys):
    one_line_error([*TRAIN, "--out", str(tmp_path / "r"), override], capsys, want)
    assert not (tmp_path / "r" / "checkpoint-last.pt").exists()


@pytest.mark.parametrize("device, want", [("tpu", "unknown device 'tpu'"), ("meta", "device 'meta' is not supported")])
def test_bad_device(device, want, tmp_path, capsys):
    line = one_line_error([*TRAIN, "--device", device, "--out", str(tmp_path / "r")], capsys, want)
    assert "valid devices: auto, cpu, cuda, cuda:N" in line


def test_eval_negative_seed(tmp_path, capsys):
    one_line_error([*EVAL, "--model", "smallcnn", "--seed", "-1", "--out", str(tmp_path / "e")], capsys,
                   "'seed' must be a number in [0,")


def test_smallcnn_on_32px_images_checked_when_built(tmp_path, capsys):
    root = tmp_path / "imgs"
    rs = np.random.RandomState(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rs.randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    one_line_error(["train", "--dataset", f"imagefolder:{root}", "--model", "smallcnn", "--val-per-class", "1",
                    "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path / "r")], capsys,
                   "cannot take 3x32x32 images", "model_kwargs image_size")
    assert not (tmp_path / "r" / "checkpoint-last.pt").exists()


MODELS = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes, kind):
            super().__init__()
            self.fc, self.kind = nn.Linear(784, num_classes), kind
        def forward(self, x):
            out = self.fc(x.flatten(1))
            if self.kind == "int":
                return out.round().long()
            if self.kind == "nograd":
                return out.detach()
            return out

    def int_logits(num_classes):
        return Net(num_classes, "int")

    def no_grad(num_classes):
        return Net(num_classes, "nograd")

    def needs_depth(num_classes, depth):
        return Net(num_classes, "ok")
""")


@pytest.mark.parametrize("factory, want", [
    ("int_logits", "the model returned int64 logits"),
    ("no_grad", "logits carry no gradient"),
    ("needs_depth", "requires argument(s) depth; give them in model_kwargs"),
])
def test_broken_user_models(factory, want, tmp_path, capsys):
    (tmp_path / "m.py").write_text(MODELS)
    one_line_error([*EVAL, "--model", f"{tmp_path / 'm.py'}:{factory}", "--allow-code", "--out", str(tmp_path / "e")],
                   capsys, want)
    assert not (tmp_path / "e" / "flags.npz").exists()


def test_report_on_result_with_names_missing_from_summary(tmp_path, capsys):
    from rfbench.benchmark.eval.result import SCHEMA

    classes = ["a", "b"]
    per = {"clean": [1.0, 0.5], "worst_case": [0.5, 0.0]}
    summary = {n: {"mean": 0.5, "worst": 0.0, "worst_class": 1, "gap": 0.5, "std": 0.25, "nsd": 0.5, "tail20": 0.0}
               for n in per}
    res = {"schema": SCHEMA, "classes": classes, "attacks": [], "names": ["clean", "pgd-20", "worst_case"],
           "per_class": per, "summary": summary, "confusion": {n: [[1, 0], [0, 1]] for n in per},
           "n_per_class": [2, 2], "threat": {"eps": 0.1, "norm": "linf", "steps": 10, "alpha": 0.01}}
    from rfbench.benchmark.eval.result import REQUIRED_KEYS

    for k in REQUIRED_KEYS:
        res.setdefault(k, {})
    path = tmp_path / "result.json"
    path.write_text(json.dumps(res))
    one_line_error(["report", str(path)], capsys, "is not an rfbench result", "'pgd-20'")
    del res["summary"]["worst_case"]
    res["names"] = ["clean", "worst_case"]
    path.write_text(json.dumps(res))
    one_line_error(["report", str(path)], capsys, "is not an rfbench result", "summary misses 'worst_case'")
