"""``eval --overwrite`` keeps the old evaluation until the new one is complete; run configs are checked before training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval import harness
from rfbench.models import create_model


def _eval(weights, out, *attacks, extra=()):
    argv = ["eval", "--model", "smallcnn", "--weights", str(weights), "--dataset", "fashion-mnist", "--n-per-class", "1",
            "--device", "cpu", "--quiet", "--out", str(out), *extra]
    for a in attacks:
        argv += ["--attack", a]
    return main(argv)


def test_failed_overwrite_keeps_the_old_result_and_flags(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(create_model("smallcnn", num_classes=10, in_channels=1).state_dict(), weights)
    out = tmp_path / "e"
    assert _eval(weights, out, "fgsm") == 0
    old = {n: (out / n).read_bytes() for n in ("result.json", "flags.npz", "per_class.csv")}

    def boom(*a, **k):
        raise OSError("injected failure while writing the new result")

    monkeypatch.setattr(harness, "build_result", boom)
    with pytest.raises(OSError):
        _eval(weights, out, "pgd:steps=2", extra=["--overwrite"])
    assert {n: (out / n).read_bytes() for n in old} == old  # old files untouched ...
    res = json.loads(old["result.json"])
    with np.load(out / "flags.npz") as z:  # ... and still consistent with each other
        assert [a["label"] for a in res["attacks"]] == ["fgsm"] and len(z.files) > 0
    monkeypatch.undo()

    assert _eval(weights, out, "pgd:steps=2", extra=["--overwrite"]) == 0
    new = json.loads((out / "result.json").read_text())
    assert [a["label"] for a in new["attacks"]] != ["fgsm"]
    assert (out / "flags.npz").read_bytes() != old["flags.npz"]
    assert not harness.staging_dir(out).exists()
    # the new flags belong to the new result: a plain rerun resumes it rather than refusing a foreign flag file
    assert _eval(weights, out, "pgd:steps=2") == 0
    assert json.loads((out / "result.json").read_text())["per_class"] == new["per_class"]


def test_bad_checkpoint_name_refused_before_training(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: t\ntrain: {dataset: fashion-mnist, model: smallcnn, defense: pgd-at, epochs: 1, "
                   "max_train_samples: 40, device: cpu}\neval: {attacks: [fgsm], n_per_class: 1}\n"
                   "checkpoints: [best, bset]\n")
    code = main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "'checkpoints' names 'bset', which defense 'pgd-at' does not save; valid: best, last" in err
    assert not (tmp_path / "r" / "train").exists()


def test_weight_average_checkpoint_names_are_accepted():
    from rfbench.benchmark.runner.config import RunConfig, resolve_run
    from rfbench.benchmark.runner.run import check_checkpoint_names
    from rfbench.core.errors import ConfigError

    train = {"dataset": "fashion-mnist", "defense": "cfa", "defense_args": {"fawa": True}}
    check_checkpoint_names(resolve_run(RunConfig(train=train, checkpoints=["best", "fawa", "fawa-best"]), quiet=True))
    with pytest.raises(ConfigError, match="valid: best, last, fawa, fawa-best"):
        check_checkpoint_names(resolve_run(RunConfig(train=train, checkpoints=["fwa"]), quiet=True))
