"""`rfbench run`: config resolution, the staged run directory, idempotence, --force and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_runs import REPO, TRACK, write_tiny_track

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval.metrics import summarize
from rfbench.benchmark.eval.result import validate_result
from rfbench.benchmark.runner import RunConfig, execute_run, is_finished, load_run_config, resolve_run
from rfbench.benchmark.runner.config import deep_merge
from rfbench.benchmark.runner.stages import StageLog
from rfbench.core.errors import ConfigError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One finished tiny run of the fashion-mnist-linf track (pgd-at)."""
    root = tmp_path_factory.mktemp("runner")
    track = write_tiny_track(root)
    run = resolve_run(load_run_config(track), defense="pgd-at", out=root / "run", quiet=True)
    return {"track": track, "root": root, "run": run, "dir": execute_run(run, quiet=True)}


# -- resolution (no training) -------------------------------------------------------
def test_precedence_defense_preset_seed_overrides():
    base = load_run_config(TRACK)
    run = resolve_run(base, defense="dafa", seed=3, overrides=["train.defense_args.warmup_epochs=2", "eval.n_per_class=7"])
    assert run.train.defense == "dafa" and run.train.seed == 3
    assert run.train.defense_args == {"warmup_epochs": 2}  # the override is applied
    assert run.eval.n_per_class == 7 and run.eval.eps == pytest.approx(0.1)
    assert run.out == Path("runs/fashion-mnist-linf/dafa-s3")
    assert resolve_run(base, defense="dafa").train.defense_args == {}  # DAFA's warm-up is a budget fraction: no preset
    assert resolve_run(base, defense="frl-rw", overrides=["train.epochs=2"]).train.epochs == 2  # override beats preset (1)
    assert resolve_run(base, defense="frl-rw").train.epochs == 1  # the preset
    assert resolve_run(base, defense="trades").train.defense_args == {}


def test_pretrain_stage_initialises_training():
    run = resolve_run(load_run_config(TRACK), defense="frl-rw", out="/x/frl")
    assert run.pretrain is not None and run.pretrain.defense == "trades" and run.pretrain.epochs == 2
    assert run.pretrain.out == "/x/frl/pretrain" and run.train.out == "/x/frl/train"
    assert run.train.init == "/x/frl/pretrain/checkpoint-best.pt" and run.train.epochs == 1
    assert run.pretrain.max_train_samples == run.train.max_train_samples  # inherited from train
    assert resolve_run(load_run_config(TRACK), defense="pgd-at").pretrain is None


def test_resolution_errors_name_the_problem():
    base = load_run_config(TRACK)
    with pytest.raises(ConfigError, match="--defense NAME, not with train.defense="):
        resolve_run(base, overrides=["train.defense=trades"])
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        resolve_run(base, overrides=["train.epoch=3"])
    with pytest.raises(ConfigError, match="either 'pretrain' or 'train.init'"):
        resolve_run(base, defense="frl-rw", overrides=["train.init=x.pt"])
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        from rfbench.core.config import from_dict

        from_dict(RunConfig, {"trian": {}})


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    a = {"train": {"epochs": 2, "defense_args": {"beta": 6, "x": 1}}, "checkpoints": ["best", "last"]}
    b = {"train": {"defense_args": {"beta": 3}}, "checkpoints": ["best"]}
    assert deep_merge(a, b) == {"train": {"epochs": 2, "defense_args": {"beta": 3, "x": 1}}, "checkpoints": ["best"]}
    assert a["train"]["defense_args"]["beta"] == 6  # inputs untouched


# -- a real run -----------------------------------------------------------------------
def test_run_directory_has_every_stage_and_output(tiny):
    d = tiny["dir"]
    stages = json.loads((d / "stages.json").read_text())
    assert [k for k in stages] == ["train", "eval-best", "eval-last", "report"]
    assert all(s["status"] == "done" for s in stages.values())
    for name in ("run.yaml", "result.json", "report.md", "per_class.png", "training.png", "train/checkpoint-best.pt"):
        assert (d / name).exists(), name
    result = json.loads((d / "result.json").read_text())
    assert result["schema"] == "rfbench.run/1" and result["defense"] == "pgd-at" and result["model"] == "cnn3"
    assert set(result["checkpoints"]) == {"best", "last"}
    for which, block in result["checkpoints"].items():
        full = json.loads((d / f"eval-{which}" / "result.json").read_text())
        validate_result(full)
        assert block["per_class"] == full["per_class"] and block["attacks"] == ["fgsm", "pgd-2"]
        assert block["n_per_class"] == [5] * 10 and (d / block["flags_file"]).is_file()
        wc = np.array(block["per_class"]["worst_case"])
        assert block["summary"]["worst_case"]["mean"] == pytest.approx(wc.mean())
        assert block["summary"]["worst_case"]["worst"] == pytest.approx(summarize(wc)["worst"])
    assert result["checkpoints"]["last"]["epoch"] == 1
    assert result["cost"]["accelerator"] == "cpu" and result["cost"]["gpu_hours"] is None
    assert result["cost"]["train_seconds"] > 0 and result["provenance"]["packages"]["torch"]
    assert "| best " in (d / "report.md").read_text()


def test_rerun_is_a_no_op(tiny, caplog):
    d = tiny["dir"]
    before = {p: p.stat().st_mtime_ns for p in (d / "result.json", d / "stages.json", d / "train" / "checkpoint-last.pt")}
    with caplog.at_level("INFO"):
        execute_run(tiny["run"], quiet=True)
    assert "is finished; nothing to do" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_changed_config_is_refused_without_force(tiny):
    changed = resolve_run(load_run_config(tiny["track"]), defense="pgd-at", out=tiny["dir"], quiet=True,
                          overrides=["eval.n_per_class=4"])
    with pytest.raises(ConfigError, match=r"holds a run with a different config \(eval.n_per_class differ"):
        execute_run(changed, quiet=True)


def test_interrupted_evaluation_stage_is_redone_alone(tiny):
    """A run killed during `eval-last` redoes that stage only: training and eval-best are kept."""
    d = tiny["dir"]
    stages = StageLog(d).stages
    kept = {k: stages[k]["finished_at"] for k in ("train", "eval-best")}
    ckpt = (d / "train" / "checkpoint-last.pt").stat().st_mtime_ns
    result_before = json.loads((d / "result.json").read_text())
    # what a kill in the middle of eval-last leaves: no marker for it, no run result
    del stages["eval-last"], stages["report"]
    (d / "stages.json").write_text(json.dumps(stages))
    (d / "result.json").unlink()
    assert not is_finished(d)
    execute_run(tiny["run"], quiet=True)
    after = StageLog(d)
    assert {k: after.stages[k]["finished_at"] for k in kept} == kept
    assert (d / "train" / "checkpoint-last.pt").stat().st_mtime_ns == ckpt
    result = json.loads((d / "result.json").read_text())
    for which in ("best", "last"):  # the same numbers (eval-last resumed from its finished flag file)
        for key in ("per_class", "summary", "n_per_class", "epoch"):
            assert result["checkpoints"][which][key] == result_before["checkpoints"][which][key]


def test_force_starts_over(tiny, tmp_path):
    d = tiny["dir"]
    first = json.loads((d / "result.json").read_text())["provenance"]["finished_at"]
    time.sleep(1.1)
    execute_run(tiny["run"], force=True, quiet=True)
    result = json.loads((d / "result.json").read_text())
    assert result["provenance"]["finished_at"] != first
    assert result["stages"]["train"]["seconds"] > 0


def test_cli_run_prints_the_summary(tiny, capsys):
    assert main(["run", str(tiny["track"]), "--defense", "pgd-at", "--out", str(tiny["dir"]), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| checkpoint" in out and "robust (worst case)" in out


def test_cli_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "rfbench run leaderboards/fashion-mnist-linf/track.yaml --defense pgd-at" in text and "--force" in text


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL `rfbench run` after its training stage; the rerun finishes with the numbers of an uninterrupted run."""
    track = write_tiny_track(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "rfbench.benchmark.cli", "run", str(track), "--defense", "pgd-at", "--quiet"]
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed")], env=env, cwd=tmp_path)
    stages = tmp_path / "killed" / "stages.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if stages.exists() and "train" in json.loads(stages.read_text() or "{}"):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "result.json").exists(), "the run finished before it could be killed"
    subprocess.run([*cmd, "--out", str(tmp_path / "killed")], env=env, cwd=tmp_path, check=True)
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], env=env, cwd=tmp_path, check=True)
    killed = json.loads((tmp_path / "killed" / "result.json").read_text())
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    for which in ("best", "last"):
        assert killed["checkpoints"][which]["per_class"] == whole["checkpoints"][which]["per_class"]
    assert yaml.safe_load((tmp_path / "killed" / "run.yaml").read_text())["train"]["defense"] == "pgd-at"


@pytest.mark.slow
def test_smoke_passes_a_defense_and_fails_a_broken_one(tmp_path, capsys):
    """`rfbench smoke`: a working plugin passes with its time printed; a defense with a NaN loss is reported as failed."""
    broken = tmp_path / "broken_defense.py"
    broken.write_text(
        "from rfbench.defenses.base import Defense, LossOutput\n"
        "class NaNAT(Defense):\n"
        "    def loss(self, model, x, y, x_adv):\n"
        "        logits = model(x_adv)\n"
        "        return LossOutput(logits.sum() * float('nan'), logits.detach())\n")
    plugin = REPO / "examples" / "my_defense.py"
    code = main(["smoke", "--defense", f"{plugin}:WorstClassAT", "--defense", f"{broken}:NaNAT",
                 "--out", str(tmp_path / "smoke"), "--root", str(REPO)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "| ok " in out and "| FAIL " in out and "NonFiniteLossError" in out
    assert "1/2 defenses pass" in err and "FAILED: " in err and "NaNAT" in err
    result = json.loads((tmp_path / "smoke" / "my_defense-WorstClassAT" / "result.json").read_text())
    assert result["checkpoints"]["best"]["checks"] == "pass" and result["config"]["smoke"]["eval"]["n_per_class"] == 30
