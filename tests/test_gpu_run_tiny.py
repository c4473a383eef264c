"""benchmarks/gpu_run.py --tiny: the GPU session's whole path (ceilings, timings, track entries) on a CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TAR = Path("/work/shared/data/cifar10-jpeg.tar.gz")


@pytest.mark.slow
@pytest.mark.skipif(not TAR.exists(), reason="the JPEG CIFAR-10 archive is not on this machine")
def test_gpu_run_tiny_runs_every_stage_and_labels_the_jpeg_copy(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_run.py"), "--tiny", "--out", str(out),
                           "--data", str(TAR), "--budget-s", "400", "--defenses", "pgd-at"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_run.json").read_text())
    stages = report["stages"]
    for name in ("ceilings", "attacks", "train"):
        assert stages[name]["status"] == "done", stages[name]
    assert stages["ceilings"]["bf16_gemm_tflops"] > 0 and stages["ceilings"]["copy_gb_per_s"] > 0
    assert report["ratios"]["PGD fp32 bit-identical to torchattacks"] is True
    assert report["data"]["dataset"] == "cifar10-jpeg"
    # the entry is checked against a track of its own, never the real-CIFAR one
    assert stages["entries"]["track"] == "cifar10-jpeg-linf-fast-tiny"
    (entry,) = stages["entries"]["entries"]
    assert entry["estimate_from"] == "measured"
    result = json.loads((out / "runs" / "cifar10-jpeg-linf-fast-tiny" / "pgd-at-s0" / "result.json").read_text())
    assert result["dataset"] == "cifar10-jpeg"
    assert set(result["checkpoints"]) == {"best"}
    if entry["status"] == "done":
        data = json.loads(Path(entry["entry"]).read_text())
        assert data["dataset"] == "cifar10-jpeg" and data["track"] == "cifar10-jpeg-linf-fast-tiny"
    else:  # a one-epoch tiny model is near chance: the leaderboard check must refuse it for exactly that
        assert "sanity checks failed" in entry["status"], entry["status"]
    assert proc.stdout.rstrip().splitlines()[-1].startswith("wrote ")  # the summary table is printed last


def test_jpeg_entries_are_refused_by_the_real_cifar_track():
    """check_protocol refuses an entry whose dataset is cifar10-jpeg in the cifar10-linf-fast track."""
    from rfbench.benchmark.leaderboard.check import check_protocol
    from rfbench.benchmark.leaderboard.schema import load_track

    fast = load_track(ROOT / "leaderboards" / "cifar10-linf-fast" / "track.yaml")
    assert fast.info.hardware == "gpu" and fast.info.protocol.dataset == "cifar10"

    class E:  # the fields check_protocol reads
        dataset, model, track = "cifar10-jpeg", "resnet18", "cifar10-linf-fast"
        threat = type("T", (), {"norm": "linf", "eps": 8 / 255})()
        evaluations = {}
        defense = type("D", (), {"name": "pgd-at"})()
        seed = 0
        train_config = {**fast.train_config_for("pgd-at"), "dataset": "cifar10-jpeg"}

        def __getattr__(self, name):  # fields this test does not set
            return None

    problems = check_protocol(E(), fast)
    assert any("dataset is 'cifar10-jpeg'" in p for p in problems)
    assert any("train_config.dataset" in p for p in problems)
