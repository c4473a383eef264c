"""`rfbench sweep`: grid expansion, the seed summary (mean ± std), and the local and Ray executors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_runs import write_tiny_track

from rfbench.benchmark.cli import main
from rfbench.benchmark.runner.executors import ExecutorOptions, gpus_for
from rfbench.benchmark.runner.summary import aggregate, mean_std
from rfbench.benchmark.runner.sweep import GridConfig, expand_grid, load_grid, run_sweep


def _grid(root: Path, out: str, seeds=(0, 1)) -> Path:
    track = write_tiny_track(root, checkpoints=("best",))
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": str(track), "defenses": ["pgd-at"], "seeds": list(seeds), "out": out}))
    return path


def test_expand_grid_is_the_product_in_a_fixed_order(tmp_path):
    track = write_tiny_track(tmp_path)
    grid = GridConfig(base=str(track), defenses=["pgd-at", "trades"], datasets=["fashion-mnist", "fashion-mnist-lt"],
                      seeds=[0, 1], overrides={"default": [], "short": ["train.epochs=2"]}, out=str(tmp_path / "s"))
    cells = expand_grid(grid)
    assert len(cells) == 2 * 2 * 2 * 2
    first, last = cells[0], cells[-1]
    assert first.key == {"dataset": "fashion-mnist", "defense": "pgd-at", "variant": "default", "seed": 0}
    assert last.key == {"dataset": "fashion-mnist-lt", "defense": "trades", "variant": "short", "seed": 1}
    assert last.run.out == tmp_path / "s" / "fashion-mnist-lt" / "trades" / "short" / "seed1"
    assert last.run.train.epochs == 2 and first.run.train.epochs == 1
    assert last.run.train.dataset == "fashion-mnist-lt" and last.run.train.seed == 1


def test_grid_file_errors_are_one_line(tmp_path):
    from rfbench.core.errors import ConfigError

    bad = tmp_path / "g.yaml"
    bad.write_text("seeds: []\n")
    with pytest.raises(ConfigError, match="'seeds' must list at least one seed"):
        load_grid(bad)
    bad.write_text("overrides: {short: train.epochs=1}\n")
    with pytest.raises(ConfigError, match="overrides.short must be a list of key=value strings"):
        load_grid(bad)


def test_mean_std_and_aggregation_by_hand(tmp_path):
    """Three seeds with worst-case means 0.5, 0.6, 0.7: mean 0.6, sample std 0.1."""
    assert mean_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    assert mean_std([0.3]) == (0.3, 0.0)
    rows = []
    for seed, m in enumerate([0.5, 0.6, 0.7]):
        rows.append({"dataset": "d", "defense": "x", "variant": "v", "seed": seed, "checkpoint": "best",
                     "run_dir": f"r{seed}", "robust": m, "clean": 0.9})
    import pandas as pd

    groups = aggregate(pd.DataFrame(rows), ["dataset", "defense", "variant"])
    assert len(groups) == 1 and groups[0]["seeds"] == [0, 1, 2]
    assert groups[0]["metrics"]["robust"]["mean"] == pytest.approx(0.6)
    assert groups[0]["metrics"]["robust"]["std"] == pytest.approx(0.1)
    assert groups[0]["metrics"]["clean"]["std"] == 0.0


def test_gpus_follow_the_device(tmp_path):
    track = write_tiny_track(tmp_path)
    cell = expand_grid(GridConfig(base=str(track), out=str(tmp_path)))[0]
    opts = ExecutorOptions()
    assert gpus_for(cell.run, opts, cluster_gpus=0) == 0  # the tiny track trains on the CPU
    import dataclasses

    cuda = dataclasses.replace(cell.run, train=dataclasses.replace(cell.run.train, device="cuda"))
    auto = dataclasses.replace(cell.run, train=dataclasses.replace(cell.run.train, device="auto"))
    assert gpus_for(cuda, opts, 0) == 1 and gpus_for(auto, opts, 4) == 1 and gpus_for(auto, opts, 0) == 0
    assert gpus_for(cuda, ExecutorOptions(gpus=0.5), 0) == 0.5


def _check_summary(out: Path) -> dict:
    """summary.json equals the aggregation recomputed here from the runs' result files."""
    summary = json.loads((out / "summary.json").read_text())
    runs = json.loads((out / "sweep.json").read_text())
    assert all(r["ok"] for r in runs)
    worst = []
    for r in runs:
        res = json.loads((Path(r["out"]) / "result.json").read_text())
        worst.append(res["checkpoints"]["best"]["summary"]["worst_case"]["mean"])
    (group,) = summary["groups"]
    m = group["metrics"]["robust"]
    assert m["values"] == worst and m["mean"] == pytest.approx(np.mean(worst))
    assert m["std"] == pytest.approx(np.std(worst, ddof=1))
    assert group["seeds"] == [0, 1]
    return summary


def test_local_sweep_writes_runs_and_summary(tmp_path, capsys):
    grid = _grid(tmp_path, str(tmp_path / "local"))
    assert main(["sweep", str(grid), "--quiet"]) == 0
    assert "| fashion-mnist | pgd-at" in capsys.readouterr().out
    summary = _check_summary(tmp_path / "local")
    assert (tmp_path / "local" / "fashion-mnist" / "pgd-at" / "default" / "seed1" / "result.json").exists()
    assert "±" in (tmp_path / "local" / "summary.md").read_text()
    # a rerun skips the finished runs and gives the same summary
    outcomes, _ = run_sweep(load_grid(grid), "local", ExecutorOptions(quiet=True))
    assert all(o.ok for o in outcomes) and all(o.seconds < 30 for o in outcomes)
    assert json.loads((tmp_path / "local" / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_ray_sweep_on_two_local_cpus_matches_the_local_executor(tmp_path):
    """The real Ray path (a local Ray with 2 CPUs, one task per run): same files, same summary as the local executor."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'rfbench[ray]'")
    grid = _grid(tmp_path, str(tmp_path / "ray"))
    assert main(["sweep", str(grid), "--executor", "ray", "--ray-cpus", "2", "--quiet"]) == 0
    assert not ray.is_initialized()  # the executor shut down the Ray it started
    ray_summary = _check_summary(tmp_path / "ray")
    assert main(["sweep", str(grid), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    local_summary = _check_summary(tmp_path / "local")
    for r, loc in zip(ray_summary["groups"], local_summary["groups"]):
        assert r["seeds"] == loc["seeds"] and set(r["metrics"]) == set(loc["metrics"])
        for name, v in r["metrics"].items():
            assert v["values"] == pytest.approx(loc["metrics"][name]["values"], abs=1e-12), name
    runs = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert {Path(r["out"]).name for r in runs} == {"seed0", "seed1"} and all(Path(r["out"]).is_absolute() for r in runs)
    assert all(math.isfinite(r["seconds"]) for r in runs)


@pytest.mark.parametrize("grid, message", [
    ({"defenses": ["pgd-at"], "seeds": [0, 0]}, "'seeds' lists 0 more than once"),
    ({"defenses": ["pgd-at", "trades", "pgd-at"]}, "'defenses' lists pgd-at more than once"),
    ({"defenses": ["pgd-at"], "no_base": True}, "'base' is missing"),
])
def test_grid_duplicates_and_missing_base_are_refused_before_any_run(tmp_path, capsys, grid, message):
    track = write_tiny_track(tmp_path)
    data = {k: v for k, v in grid.items() if k != "no_base"} | {"out": str(tmp_path / "s")}
    if not grid.get("no_base"):
        data["base"] = str(track)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list((tmp_path / "s").glob("*/result.json"))


def test_grid_with_no_defense_anywhere_and_a_file_defense_are_refused(tmp_path, capsys):
    track = write_tiny_track(tmp_path)
    text = track.read_text()
    bare = tmp_path / "bare.yaml"
    bare.write_text("\n".join(l for l in text.splitlines() if not l.strip().startswith("defense:")) + "\n")
    marker = tmp_path / "MARKER"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    for base, defenses, message in ((bare, [], "'defenses' is empty"),
                                    (track, [f"{tmp_path / 'evil.py'}:Evil"], "--allow-code")):
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump({"base": str(base), "defenses": defenses, "out": str(tmp_path / "s")}))
        assert main(["sweep", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not marker.exists()
