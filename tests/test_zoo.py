"""``rfbench zoo``: locally made models evaluated per class, ranked by the worst class, resumable and sharded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from rfbench.benchmark.cli import main
from rfbench.benchmark.runner.zoo import published_from_model_info, rank_rows
from rfbench.core.errors import ConfigError


@pytest.fixture
def zoo_file(fmnist_cnn, tmp_path):
    """Two locally made models: the fixture's SmallCNN and a copy with its last layer's weights halved and shifted."""
    torch.save(fmnist_cnn.state_dict(), tmp_path / "a.pt")
    other = {k: v.clone() for k, v in fmnist_cnn.state_dict().items()}
    last = [k for k in other if k.endswith("weight")][-1]
    other[last] = other[last] * 0.5 + 0.05 * torch.randn(other[last].shape, generator=torch.Generator().manual_seed(0))
    torch.save(other, tmp_path / "b.pt")
    spec = {"dataset": "fashion-mnist", "attacks": ["fgsm", "pgd:steps=2"], "eps": 0.05, "n_per_class": 3, "batch_size": 8,
            "models": [{"name": "net-a", "model": "smallcnn", "weights": "a.pt", "model_args": {"width": 0.25},
                        "published_autoattack": 0.25},
                       {"name": "net-b", "model": "smallcnn", "weights": "b.pt", "model_args": {"width": 0.25}}]}
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _zoo(path: Path, out: Path, *extra: str) -> int:
    return main(["zoo", str(path), "--out", str(out), "--device", "cpu", "--quiet", *extra])


def test_zoo_ranks_local_models_by_the_worst_class(zoo_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert _zoo(zoo_file, out) == 0
    board = json.loads((out / "zoo.json").read_text())
    rows = {r["name"]: r for r in board["models"]}
    assert set(rows) == {"net-a", "net-b"}
    for name, r in rows.items():  # each row is its model's own result.json, unchanged
        res = json.loads((out / name / "result.json").read_text())
        wc = res["summary"]["worst_case"]
        assert (r["worst"], r["robust_mean"], r["clean"]) == (wc["worst"], wc["mean"], res["summary"]["clean"]["mean"])
        assert r["worst_class"] == res["classes"][wc["worst_class"]] and r["checks"] == res["checks"]["overall"]
        assert (out / name / "flags.npz").exists()
    order = sorted(rows.values(), key=lambda r: (-r["worst"], -r["robust_mean"]))
    assert [r["name"] for r in board["models"]] == [r["name"] for r in order] and board["models"][0]["rank"] == 1
    assert rows["net-a"]["published_autoattack"] == 0.25
    assert rows["net-a"]["difference"] == pytest.approx(rows["net-a"]["robust_mean"] - 0.25)
    assert rows["net-b"]["published_autoattack"] is None
    table = (out / "zoo.md").read_text()
    assert "| net-a |" in table and "25.0" in table
    # resumable: a second call recomputes nothing (the flag files are not rewritten)
    stamps = {n: (out / n / "flags.npz").stat().st_mtime_ns for n in rows}
    assert _zoo(zoo_file, out) == 0
    assert stamps == {n: (out / n / "flags.npz").stat().st_mtime_ns for n in rows}


def test_zoo_shards_merge_to_the_same_table(zoo_file, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _zoo(zoo_file, one) == 0
    assert _zoo(zoo_file, two, "--shard", "1/2") == 0 and not (two / "zoo.json").exists()
    assert _zoo(zoo_file, two, "--shard", "0/2") == 0  # the last shard writes the table
    a, b = (json.loads((d / "zoo.json").read_text())["models"] for d in (one, two))
    assert a == b


@pytest.mark.slow
def test_zoo_shards_as_ray_tasks_give_the_same_table(zoo_file, tmp_path):
    """``--shards 2 --executor ray``: every model's two shards run as Ray tasks, then the table is written."""
    pytest.importorskip("ray")
    one, two = tmp_path / "one", tmp_path / "two"
    assert _zoo(zoo_file, one) == 0
    assert _zoo(zoo_file, two, "--shards", "2", "--executor", "ray") == 0
    assert sorted(p.name for p in (two / "net-a").glob("shard-*")) == ["shard-0-of-2", "shard-1-of-2"]
    a, b = (json.loads((d / "zoo.json").read_text())["models"] for d in (one, two))
    assert a == b


def test_published_numbers_from_robustbench_model_info(tmp_path):
    d = tmp_path / "model_info" / "cifar10" / "Linf"
    d.mkdir(parents=True)
    (d / "Carmon2019Unlabeled.json").write_text(json.dumps({"autoattack_acc": "59.53", "clean_acc": "89.69"}))
    assert published_from_model_info(tmp_path / "model_info", "cifar10", "Linf", "Carmon2019Unlabeled") == pytest.approx(0.5953)
    assert published_from_model_info(tmp_path / "model_info", "cifar10", "Linf", "Missing") is None


def test_ranking_and_bad_zoo_files(tmp_path, capsys):
    rows = [{"name": "x", "worst": 0.2, "robust_mean": 0.5}, {"name": "y", "worst": 0.3, "robust_mean": 0.4},
            {"name": "z", "worst": 0.3, "robust_mean": 0.45}]
    assert [r["name"] for r in rank_rows(rows)] == ["z", "y", "x"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"dataset": "fashion-mnist", "models": [{"model": "smallcnn", "robustbench": "X"}]}))
    assert main(["zoo", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "either 'robustbench: NAME' or 'model: ARCH'" in capsys.readouterr().err
    from rfbench.benchmark.runner.zoo import load_zoo

    bad.write_text(yaml.safe_dump({"dataset": "fashion-mnist", "models": []}))
    with pytest.raises(ConfigError, match="non-empty"):
        load_zoo(bad)
