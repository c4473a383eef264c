"""`rfbench reproduce`: table definitions (published numbers with their paper and table), dry run and cost, verdicts, smoke scale."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from tiny_runs import REPO, TINY_TRAIN

from rfbench.benchmark.cli import main
from rfbench.benchmark.runner.cost import dataset_sizes, forward_gflop, run_cost
from rfbench.benchmark.runner.executors import ExecutorOptions
from rfbench.benchmark.runner.reproduce import compare, load_table, reproduce, table_cells, table_path, verdict

SPEC = REPO.parent / "shared" / "spec" / "reference-numbers.md"  # the project spec, beside the repository
TABLES = ["cfa-table1", "dafa-cifar10", "atbsl-cifar10lt50", "reat-cifar10lt", "robustlt-cifar10lt50"]


@pytest.mark.parametrize("name", TABLES)
def test_tables_load_and_every_published_number_is_in_the_reference(name):
    table = load_table(table_path(name, REPO))
    assert table.id == name and table.rows and table.columns
    cells = table_cells(table, "full", Path("/tmp/x"))
    assert len(cells) == len(table.rows) * len(table.seeds)
    if not SPEC.exists():
        pytest.skip("spec/reference-numbers.md not available here")
    reference = {float(x) for x in re.findall(r"\d+\.\d+", SPEC.read_text())}
    for row in table.rows:
        for col, cell in row.published.items():
            for stat, value in cell.items():
                # the file holds the paper's percentages; load_table turns them into fractions
                assert round(100 * value, 6) in reference, f"{name} {row.id} {col} {stat} = {value} is not in reference-numbers.md"


def test_cfa_table_rows_and_recipe():
    table = load_table(table_path("cfa-table1", REPO))
    assert [r.label for r in table.rows] == ["PGD-AT", "PGD-AT + CFA", "TRADES", "TRADES + CFA", "FRL"]
    cells = {c.key["row"]: c.run for c in table_cells(table, "full", Path("/tmp/x"), seeds=[0])}
    assert cells["pgd-at"].train.model == "preact_resnet18" and cells["pgd-at"].train.epochs == 200
    assert cells["pgd-at"].train.milestones == [100, 150] and cells["pgd-at"].train.select == "mean+worst"
    frl = cells["frl"]
    assert frl.pretrain.defense == "trades" and frl.pretrain.epochs == 200 and frl.pretrain.lr == 0.1
    assert frl.train.defense == "frl-rwrm" and frl.train.epochs == 40 and frl.train.lr == 0.001
    assert frl.train.init.endswith("frl/seed0/pretrain/checkpoint-best.pt")
    assert cells["trades-cfa"].train.defense_args == {"base": "trades"}
    smoke = {c.key["row"]: c.run for c in table_cells(table, "smoke", Path("/tmp/x"))}
    assert smoke["frl"].pretrain.epochs == 1 and smoke["frl"].train.dataset == "fashion-mnist"


def test_robustlt_table_grid_matches_its_configs():
    """The RobustLT grid: its seven methods, each with the recipe of configs/cifar10-lt50-robustlt/<row>.yaml."""
    from rfbench.benchmark.train.config import TrainConfig
    from rfbench.core.config import from_dict, load_yaml

    table = load_table(table_path("robustlt-cifar10lt50", REPO))
    assert [r.label for r in table.rows] == ["PGD-AT", "AWP", "RoBal", "AT-BSL", "REAT", "TAET", "RobustLT"]
    cells = {c.key["row"]: c.run.train for c in table_cells(table, "full", Path("/tmp/x"), seeds=[0])}
    keys = ("dataset", "imbalance_ratio", "model", "defense", "defense_args", "eps", "alpha", "steps", "epochs",
            "batch_size", "lr", "momentum", "nesterov", "weight_decay", "milestones", "augment", "augment_policy")
    for row, train in cells.items():
        cfg = from_dict(TrainConfig, load_yaml(REPO / "configs" / "cifar10-lt50-robustlt" / f"{row}.yaml"))
        for k in keys:
            assert getattr(train, k) == getattr(cfg, k), (row, k)
    assert cells["awp"].epochs == 200 and cells["robal"].batch_size == 64 and cells["at-bsl"].augment == "autoaugment"
    assert {r.id for r in table.rows if r.published} == {"robal"}  # the only published numbers at hand


def test_cost_model_matches_performance_md():
    """PGD-10 AT of ResNet-18 on CIFAR-10: about 23 forward-equivalents x 1.11 GFLOP per image per epoch."""
    table = load_table(table_path("dafa-cifar10", REPO))
    (cell,) = table_cells(table, "full", Path("/tmp/x"), rows=["trades"], seeds=[0])
    sizes = dataset_sizes("cifar10", None, None, None)
    assert sizes["train"] == 49_000 and sizes["val"] == 1_000 and sizes["test"] == 10_000
    pgd_at = dataclasses.replace(cell.run, train=dataclasses.replace(cell.run.train, defense="pgd-at"))
    per_epoch = run_cost(pgd_at).train_flop / 110
    expected = 1.11e9 * (49_000 * 23 + 1_000 * 22)
    assert per_epoch == pytest.approx(expected)
    assert run_cost(cell.run).train_flop / 110 == pytest.approx(1.11e9 * (49_000 * 27 + 1_000 * 22))  # TRADES: 27
    aa_eval = run_cost(cell.run).eval_flop
    assert aa_eval == pytest.approx(2 * 10_000 * (1 + 4750) * 1.11e9)  # two checkpoints, AutoAttack standard
    assert dataset_sizes("cifar10-lt", 50, None, None)["train"] == 13_996
    assert forward_gflop("wrn34_10", 100, (3, 32, 32)) == 13.3
    assert 0.001 < forward_gflop("smallcnn", 10, (1, 28, 28)) < 0.1  # measured with FlopCounterMode


def test_dry_run_prints_grid_and_cost(capsys):
    assert main(["reproduce", "cfa-table1", "--dry-run", "--root", str(REPO)]) == 0
    out = capsys.readouterr().out
    assert "CFA Table 1" in out and out.count("preact_resnet18") == 25  # 5 rows x 5 seeds
    # no GPU measurement in perf/results: an assumed range, said so, never a single "realistic" figure
    assert re.search(r"estimated cost: [\d.]+ PFLOP = [\d.]+-[\d.]+ GPU-hours .* at 100-400 TFLOP/s \(assumed", out)
    assert "realistic" not in out
    assert "setting parameters" not in out.lower() and "apgd-ce" not in out.lower().replace("label=aa", "")
    assert main(["reproduce", "reat-cifar10lt", "--dry-run", "--scale", "smoke", "--root", str(REPO)]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist-lt" in out and "CPU-hours" in out and "0.09 TFLOP/s (measured" in out


def test_cuda_throughput_is_measured_when_a_cuda_benchmark_exists(tmp_path):
    from rfbench.benchmark.runner.cost import throughput

    assert throughput("cuda", tmp_path).source.startswith("assumed")
    (tmp_path / "bench_train.json").write_text(json.dumps({"machine": {"device": "cuda"}, "rows": [
        {"kind": "rfbench", "setting": "bf16+CL", "gflop_per_s": 250_000.0},
        {"kind": "reference", "setting": "fp32", "gflop_per_s": 90_000.0}]}))
    t = throughput("cuda", tmp_path)
    assert t.measured and t.low == t.high == 250.0


def test_verdicts_by_hand():
    assert verdict(0.019, 0.02, "full", True) == "within"
    assert verdict(-0.021, 0.02, "full", True) == "outside"
    assert verdict(0.039, 0.04, "full", True) == "within"
    assert verdict(0.01, 0.02, "full", False) == "indicative: within"
    assert verdict(0.10, 0.02, "smoke", True) == "n/a (smoke scale)"
    assert verdict(None, 0.02, "full", True) == "not run"


def test_smoke_scale_end_to_end(tmp_path):
    """One row of CFA Table 1 on Fashion-MNIST with a tiny budget: runs, then a comparison in markdown and JSON."""
    table = load_table(table_path("cfa-table1", REPO))
    shrink = [f"train.{k}={v}" for k, v in TINY_TRAIN.items() if k != "model_kwargs"] + [
        "train.model_kwargs.width=0.25", "eval.n_per_class=5", "eval.plot=false"]
    cells = table_cells(table, "smoke", tmp_path, rows=["pgd-at"], overrides=shrink)
    records, md = reproduce(table, cells, "smoke", tmp_path, "local", ExecutorOptions(quiet=True))
    assert len(records) == 4 * 2  # 4 columns x (mean, worst)
    run = json.loads((tmp_path / "pgd-at" / "seed0" / "result.json").read_text())
    best_aa = next(r for r in records if r["column"] == "best AA" and r["stat"] == "mean")
    # fractions throughout: the file's 46.7 (percent, as published) is 0.467 once loaded
    assert best_aa["ours"] == pytest.approx(run["checkpoints"]["best"]["summary"]["aa"]["mean"])
    assert best_aa["published"] == pytest.approx(0.467) and best_aa["verdict"] == "n/a (smoke scale)"
    assert best_aa["diff"] == pytest.approx(best_aa["ours"] - 0.467) and best_aa["tolerance"] == pytest.approx(0.02)
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["scale"] == "smoke" and len(data["cells"]) == 8
    assert "| PGD-AT" in (tmp_path / "comparison.md").read_text() and "smoke scale" in md
    # rows that were not asked for are left out of the comparison
    assert {r["row"] for r in compare(table, [], "smoke")} == set()
