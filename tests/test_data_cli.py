"""``rfbench data describe`` end to end, through ``rfbench.benchmark.cli.main``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfbench.benchmark.cli import main
from rfbench.benchmark.data import idx
from rfbench.benchmark.data.registry import load_raw

pytestmark = pytest.mark.skipif(idx.find_idx_dir([idx.DEBIAN_FASHION_DIR]) is None, reason="Fashion-MNIST not installed")

FASHION_LT50 = [6000, 3884, 2515, 1628, 1054, 682, 442, 286, 185, 120]


def test_describe_fashion_mnist_lt_saves_indices(tmp_path, capsys):
    out_file = tmp_path / "splits" / "fmnist-lt50.json"
    assert main(["data", "describe", "fashion-mnist-lt", "--imbalance-ratio", "50", "--save-indices", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist-lt" in out and "rho = 50" in out
    assert "Ankle boot" in out and "T-shirt/top" in out
    rows = {line.split("|")[2].strip(): [int(v) for v in line.split("|")[3:6]] for line in out.splitlines()
            if line.startswith("|") and line.split("|")[1].strip().isdigit()}
    assert rows["Trouser"] == [3884, 120, 1000]
    assert rows["Ankle boot"] == [120, 120, 1000]
    assert rows["T-shirt/top"] == [6000 - 120, 120, 1000]  # the head's validation images come out of its own
    assert "note: class 0: 120 of 120 validation images" in out

    saved = json.loads(out_file.read_text())
    assert set(saved) == {"train", "val"}
    train, val = np.array(saved["train"]), np.array(saved["val"])
    labels = load_raw("fashion-mnist").train.y.numpy()
    assert np.bincount(labels[train], minlength=10).tolist() == [r[0] for r in rows.values()]
    assert np.bincount(labels[val], minlength=10).tolist() == [120] * 10
    assert not set(train) & set(val)
    assert not list(tmp_path.glob("splits/.*.tmp"))  # written atomically, no leftovers


def test_describe_share_keeps_reference_subset(tmp_path, capsys):
    out_file = tmp_path / "share.json"
    assert main(["data", "describe", "fashion-mnist", "--imbalance-ratio", "50", "--val-borrow", "share",
                 "--save-indices", str(out_file)]) == 0
    saved = json.loads(out_file.read_text())
    assert len(saved["train"]) == sum(FASHION_LT50)
    assert "both splits" in capsys.readouterr().out


def test_data_without_action_prints_help(capsys):
    assert main(["data"]) == 0
    assert "describe" in capsys.readouterr().out


def test_describe_help_explains_rho(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "describe", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "head-to-tail ratio" in text and "50 means the tail class has 1/50 of the head class's images" in text
    for flag in ("--imbalance-ratio", "--data-root", "--download", "--save-indices", "--val-borrow"):
        assert flag in text


def test_missing_dataset_is_one_line_exit_2(tmp_path, capsys):
    assert main(["data", "describe", "cifar10", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rfbench: error: CIFAR-10 not found")
    assert str(tmp_path / "cifar-10-batches-py") in err and "--download" in err


def test_unknown_dataset_lists_valid_names(capsys):
    assert main(["data", "describe", "cifar11"]) == 2
    err = capsys.readouterr().err
    assert "cifar10" in err and "fashion-mnist" in err
