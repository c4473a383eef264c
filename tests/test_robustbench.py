"""RobustBench's PyPI release beside pyautoattack: the compatibility import, offline loading from the zoo's layout."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rfbench.benchmark.data as benchmark_data
from rfbench.benchmark.cli import main
from rfbench.benchmark.data.base import ArrayDataset
from rfbench.benchmark.eval import models as M
from rfbench.core.errors import ConfigError, RfbenchError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("robustbench") is None,
                                reason="robustbench is not installed (pip install 'rfbench[robustbench]')")
NAME = "Wong2020Fast"  # PreAct-ResNet-18 of RobustBench's CIFAR-10 Linf zoo: the smallest CIFAR-10 architecture there


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_import_beside_pyautoattack_needs_the_step_and_the_step_is_narrow():
    """Plain ``import robustbench`` fails here (autoattack/pkg_resources missing); through rfbench it works, and
    afterwards the stand-in names are gone from ``sys.modules`` (other imports never see them)."""
    missing = [m for m in ("autoattack", "pkg_resources") if importlib.util.find_spec(m) is None]
    if not missing:
        pytest.skip("this environment has autoattack and pkg_resources: robustbench imports without the step")
    plain = _run("import robustbench")
    assert plain.returncode != 0 and any(f"No module named '{m}'" in plain.stderr for m in missing), plain.stderr[-500:]
    code = ("import sys, importlib.util\n"
            "from rfbench.benchmark.eval.robustbench_compat import import_robustbench\n"
            "u = import_robustbench()\n"
            "import robustbench.eval as e, pyautoattack\n"
            "assert e.AutoAttack is pyautoattack.AutoAttack\n"
            "assert callable(u.load_model)\n"
            "assert 'autoattack' not in sys.modules and 'pkg_resources' not in sys.modules\n"
            "assert importlib.util.find_spec('autoattack') is None\n"
            "print('ok')\n")
    r = _run(code)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@pytest.fixture
def zoo_dir(tmp_path):
    """A model directory holding a checkpoint made here, in RobustBench's layout (DIR/cifar10/Linf/NAME.pt)."""
    from rfbench.benchmark.eval.robustbench_compat import import_robustbench

    utils = import_robustbench()
    torch.manual_seed(0)
    net = utils.all_models[utils.BenchmarkDataset("cifar10")][utils.ThreatModel("Linf")][NAME]["model"]()
    for p in net.parameters():  # a recognisable, non-default state
        p.data.normal_(0, 0.05)
    path = tmp_path / "cifar10" / "Linf" / f"{NAME}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return tmp_path, net.state_dict()


@pytest.fixture
def offline(monkeypatch):
    """No network: any socket connection fails."""
    def refuse(*a, **k):
        raise OSError("network disabled in this test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_downloaded_checkpoint_loads_offline_through_the_zoo(zoo_dir, offline):
    d, state = zoo_dir
    model, source = M.from_robustbench(NAME, "cifar10-jpeg", "linf", d)
    assert type(model).__name__ == "Wong2020FastNet"  # robustbench's own architecture class
    assert type(model).__module__.startswith("robustbench.")
    got = model.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert source["name"] == f"robustbench:{NAME}" and source["checkpoint"].endswith(f"cifar10/Linf/{NAME}.pt")
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(RfbenchError, match="downloading"):  # not there: robustbench would download, offline it fails
        M.from_robustbench("Andriushchenko2020Understanding", "cifar10", "linf", d)
    with pytest.raises(ConfigError, match="no model 'NoSuchModel'"):
        M.from_robustbench("NoSuchModel", "cifar10", "linf", d)
    with pytest.raises(ConfigError, match="no models for dataset 'fashion-mnist'"):
        M.from_robustbench(NAME, "fashion-mnist", "linf", d)


def cifar_like(fmnist, n: int = 20):
    """A tiny 'cifar10' bundle of random 3×32×32 images (the zoo model's input), for command-line tests."""
    g = torch.Generator().manual_seed(0)
    test = ArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10,
                        [f"c{i}" for i in range(10)])
    return dataclasses.replace(fmnist, name="cifar10", test=test, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_cli_evaluates_a_zoo_model_offline(fmnist, zoo_dir, offline, monkeypatch, tmp_path, capsys):
    d, _ = zoo_dir
    monkeypatch.setattr(benchmark_data, "load_dataset", lambda *a, **k: cifar_like(fmnist))
    out = tmp_path / "eval"
    assert main(["eval", "--model", f"robustbench:{NAME}", "--robustbench-dir", str(d), "--dataset", "cifar10",
                 "--attack", "pgd:steps=1", "--eps", "8/255", "--batch-size", "10", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    r = json.loads((out / "result.json").read_text())
    assert r["n_samples"] == 20 and r["provenance"]["model"]["name"] == f"robustbench:{NAME}"


def test_zoo_command_with_a_robustbench_model_offline(fmnist, zoo_dir, offline, monkeypatch, tmp_path):
    """``rfbench zoo`` on a RobustBench entry: robustbench's loader, the published number from model_info."""
    import yaml

    d, _ = zoo_dir
    monkeypatch.setattr(benchmark_data, "load_dataset", lambda *a, **k: cifar_like(fmnist))
    info = tmp_path / "model_info" / "cifar10" / "Linf"
    info.mkdir(parents=True)
    (info / f"{NAME}.json").write_text(json.dumps({"autoattack_acc": "43.21"}))
    spec = tmp_path / "zoo.yaml"
    spec.write_text(yaml.safe_dump({"dataset": "cifar10", "attacks": ["fgsm"], "eps": 8 / 255, "batch_size": 10,
                                    "models": [NAME]}))
    out = tmp_path / "zoo"
    assert main(["zoo", str(spec), "--out", str(out), "--robustbench-dir", str(d), "--model-info",
                 str(tmp_path / "model_info"), "--device", "cpu", "--quiet"]) == 0
    (row,) = json.loads((out / "zoo.json").read_text())["models"]
    assert row["source"] == f"robustbench:{NAME}" and row["published_autoattack"] == pytest.approx(0.4321)
    assert json.loads((out / NAME / "result.json").read_text())["provenance"]["model"]["name"] == f"robustbench:{NAME}"


def test_a_zoo_model_becomes_an_external_entry_whose_audit_model_is_rebuilt_offline(fmnist, zoo_dir, offline,
                                                                                     monkeypatch, tmp_path, capsys):
    """``rfbench zoo --track`` on a RobustBench model gives the entry of a track of external models; the audit's
    model is rebuilt from the entry's source around the given checkpoint, without the network.

    (The model has random weights on random images, so its evaluation fails the prediction check and ``submit``
    refuses it, as it must; the entry is built and parsed directly.  The whole submit/audit path runs on
    registered architectures in ``tests/test_leaderboard_external.py``.)"""
    import yaml

    from rfbench.benchmark.leaderboard import load_track
    from rfbench.benchmark.leaderboard.external import entry_from_eval, load_external_model
    from rfbench.benchmark.leaderboard.schema import parse_entry

    d, state = zoo_dir
    monkeypatch.setattr(benchmark_data, "load_dataset", lambda *a, **k: cifar_like(fmnist))
    root = tmp_path / "repo"
    track_dir = root / "leaderboards" / "rb-zoo"
    track_dir.mkdir(parents=True)
    eps = 8 / 255
    track_dir.joinpath("track.yaml").write_text(yaml.safe_dump({
        "name": "rb-zoo",
        "track": {"id": "rb-zoo", "title": "zoo", "kind": "external",
                  "protocol": {"dataset": "cifar10", "model": "any", "norm": "linf", "eps": eps, "attacks": ["fgsm"],
                               "n_per_class": 2, "test_size": 20, "checkpoint": "model"}},
        "train": {"dataset": "cifar10"}, "eval": {"eps": eps, "attacks": ["fgsm"], "n_per_class": 2, "batch_size": 10},
        "checkpoints": ["model"]}))
    spec = tmp_path / "zoo.yaml"
    spec.write_text(yaml.safe_dump({"dataset": "cifar10", "models": [{"robustbench": NAME, "published_autoattack": 0.4321}]}))
    out = tmp_path / "zoo"
    assert main(["zoo", str(spec), "--track", "rb-zoo", "--root", str(root), "--out", str(out), "--robustbench-dir",
                 str(d), "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
    assert main(["leaderboard", "submit", str(out / NAME), "--track", "rb-zoo", "--root", str(root)]) == 2
    assert "sanity checks failed" in capsys.readouterr().err  # a chance-level model is never ranked
    track = load_track(track_dir / "track.yaml")
    data, flags = entry_from_eval(out / NAME, track, root)
    assert data["model"] == f"robustbench:{NAME}" and data["defense"]["code"].startswith("https://github.com/RobustBench")
    assert data["provenance"]["source"]["robustbench"] == {"dataset": "cifar10", "threat_model": "Linf"}
    assert data["provenance"]["published_autoattack"] == pytest.approx(0.4321)
    checkpoint = d / "cifar10" / "Linf" / f"{NAME}.pt"
    assert data["evaluations"]["model"]["checkpoint_sha256"] == M.file_sha256(checkpoint)
    assert flags["model"].is_file()
    moved = tmp_path / "elsewhere.pt"  # the audit gets the file wherever the reviewer keeps it
    moved.write_bytes(checkpoint.read_bytes())
    model = load_external_model(parse_entry(data, "entry"), moved, cifar_like(fmnist), tmp_path / "work", "cpu")
    assert type(model).__name__ == "Wong2020FastNet"
    got = model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)
