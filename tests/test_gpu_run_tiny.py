"""perf/gpu_run.py --tiny: the GPU session's whole path (ceilings, timings, track entries) on a CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rfbench.benchmark.data import cifar10_jpeg

ROOT = Path(__file__).resolve().parents[1]
TAR = cifar10_jpeg.archive_path()
ROOTS = ("benchmark", "attacks", "defenses")  # the top-level code folders, linked inside rfbench/
sys.path.insert(0, str(ROOT / "perf"))  # gpu_run, bench_* and _common are scripts, not a package


@pytest.mark.slow
@pytest.mark.skipif(not TAR.exists(), reason="the JPEG CIFAR-10 archive is not on this machine")
def test_gpu_run_tiny_runs_every_stage_and_labels_the_jpeg_copy(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "perf" / "gpu_run.py"), "--tiny", "--out", str(out),
                           "--data", str(TAR), "--budget-s", "400", "--defenses", "pgd-at"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_run.json").read_text())
    stages = report["stages"]
    for name in ("ceilings", "attacks", "train"):
        assert stages[name]["status"] == "done", stages[name]
    assert all(stages["ceilings"][k] > 0 for k in ("bf16_gemm_tflops", "fp32_gemm_tflops", "copy_gb_per_s"))
    assert stages["ceilings"]["compile_ok"] is None  # --tiny compiles nothing, so it does not probe
    assert report["ratios"]["PGD fp32 bit-identical to torchattacks"] is True
    assert report["data"]["dataset"] == "cifar10-jpeg"
    # the entry is checked against a track of its own, never the real-CIFAR one
    assert stages["entries"]["track"] == "cifar10-jpeg-linf-fast-tiny"
    (entry,) = stages["entries"]["entries"]
    assert entry["estimate_from"].startswith("measured") and "pgd-at fp32" in entry["estimate_from"]
    result = json.loads((out / "runs" / "cifar10-jpeg-linf-fast-tiny" / "pgd-at-s0" / "result.json").read_text())
    assert result["dataset"] == "cifar10-jpeg"
    assert set(result["checkpoints"]) == {"best"}
    # the tiny schedule trains a model the entry check accepts (above chance, not one constant class)
    assert entry["status"] == "done", entry["status"]
    # the budget logic relies on the estimate (AutoAttack counted on every image) not falling short
    assert entry["estimate_s"] >= entry["train_seconds"] + entry["eval_seconds"]
    data = json.loads(Path(entry["entry"]).read_text())
    assert data["dataset"] == "cifar10-jpeg" and data["track"] == "cifar10-jpeg-linf-fast-tiny"
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
        defense = type("D", (), {"name": "pgd-at", "fidelity": "paper"})()
        seed = 0
        train_config = {**fast.train_config_for("pgd-at"), "dataset": "cifar10-jpeg"}

        def __getattr__(self, name):  # fields this test does not set
            return None

    problems = check_protocol(E(), fast)
    assert any("dataset is 'cifar10-jpeg'" in p for p in problems)
    assert any("train_config.dataset" in p for p in problems)


def test_a_checkout_on_pythonpath_imports_without_an_install():
    """``PYTHONPATH=<checkout>`` (the GPU machine's way) imports rfbench.<root> from the checkout's folders.

    ``python -S`` leaves out site-packages, so no installed or editable rfbench can answer.
    """
    code = ("import importlib.util, json; "
            "print(json.dumps({r: importlib.util.find_spec('rfbench.' + r).origin for r in ROOTS}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-S", "-c", f"ROOTS = {ROOTS!r}; " + code], capture_output=True,
                          text=True, cwd="/", env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    origins = {r: str(Path(o).resolve()) for r, o in json.loads(proc.stdout).items()}
    assert origins == {r: str(ROOT / r / "__init__.py") for r in ("benchmark", "attacks", "defenses")}


def test_a_second_checkout_on_pythonpath_wins_over_an_installed_copy(tmp_path):
    """With rfbench installed (the test environment's editable or wheel install), ``PYTHONPATH=<other
    checkout>`` gives that checkout's subpackages under its ``rfbench``, never a mix of the two copies."""
    other = tmp_path / "other"
    for part in ("rfbench", "setup.py", *("benchmark", "attacks", "defenses")):
        src = ROOT / part
        (shutil.copytree(src, other / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy2(src, other / part))
    code = ("import importlib, json; "
            "print(json.dumps([importlib.import_module('rfbench.' + r).__file__ for r in ROOTS]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-c", f"ROOTS = {ROOTS!r}; " + code], capture_output=True, text=True,
                          cwd="/", env={**env, "PYTHONPATH": str(other)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    files = [str(Path(f).resolve()) for f in json.loads(proc.stdout)]
    assert files == [str(other / r / "__init__.py") for r in ("benchmark", "attacks", "defenses")]


def test_the_watchdog_interrupts_a_stage_that_overruns_the_budget():
    import time

    import gpu_run

    budget = gpu_run.Budget(seconds=1.5, margin=1.0)  # fires at left() - margin / 2, i.e. after about 1 s
    t0 = time.monotonic()
    assert budget.stop_reason() == "by an interrupt"  # a Ctrl-C now would not be the budget's
    with pytest.raises(KeyboardInterrupt), budget.watchdog():
        time.sleep(30)
    assert 0.9 <= time.monotonic() - t0 < 5
    assert budget.stop_reason() == "at the budget"


@pytest.mark.slow
@pytest.mark.skipif(not TAR.exists(), reason="the JPEG CIFAR-10 archive is not on this machine")
def test_an_entry_started_over_budget_is_stopped_and_the_same_command_finishes_it(tmp_path):
    """--over-budget start: an entry estimated not to fit starts anyway; stopped by SIGINT (what the watchdog
    sends, tested above) after its first epoch, it is recorded as resumable, and a rerun into OUTDIR finishes it.

    The stop is sent by the test when epoch 1 is logged, not left to a short budget: how far a few seconds get
    depends on the machine (on a fast one the whole tiny entry fits in 15 s).
    """
    import signal
    import time

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run_dir = out / "runs" / "cifar10-jpeg-linf-fast-tiny" / "trades-s0"
    log = run_dir / "train" / "log.jsonl"

    def gpu_run(budget_s, stop_after_epoch_1=False):
        cmd = [sys.executable, str(ROOT / "perf" / "gpu_run.py"), "--tiny", "--skip-bench", "--out", str(out),
               "--data", str(TAR), "--defenses", "trades", "--over-budget", "start", "--margin-s", "2",
               "--budget-s", str(budget_s)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if stop_after_epoch_1:
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if log.exists() and log.read_text().strip():
                    proc.send_signal(signal.SIGINT)
                    break
                time.sleep(0.1)
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        report = json.loads((out / "gpu_run.json").read_text())
        (entry,) = report["stages"]["entries"]["entries"]
        return report, entry

    # the estimate (49 s for tiny TRADES on a 2-core AVX512 EPYC, AutoAttack counted on every image; more on
    # slower machines) x 1.25 does not fit 30 s; if epoch 1 were not logged by then, the watchdog stops it
    _, first = gpu_run(30, stop_after_epoch_1=True)
    assert first["started_over_budget"] is True
    assert first["status"] == "stopped by an interrupt (resumable: rerun the same command)", first["status"]
    assert not (run_dir / "result.json").exists()

    report, second = gpu_run(400)
    assert second["status"] == "done", second["status"]
    assert "started_over_budget" not in second
    assert len(report["earlier_commands"]) == 1 and "--budget-s 30" in report["earlier_commands"][0]
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == sorted(set(epochs)) and len(epochs) == 6  # resumed: no epoch trained twice, none missing


@pytest.mark.parametrize("tiny", [True, False], ids=["tiny", "gpu"])
def test_each_benchmark_stage_gets_the_images_its_arguments_time(tiny):
    """The folder handed to the timing stages holds what they time (a short one would overstate images/s)."""
    import bench_attacks
    import bench_train
    import gpu_run

    a_argv, t_argv, (train_pc, test_pc), _ = gpu_run.bench_plan(tiny)
    a, t = bench_attacks.parse_args(a_argv), bench_train.parse_args(t_argv)
    n = t.batch_size * t.batches
    assert 10 * (train_pc - 1) >= n  # one image per class goes to validation
    assert n % 10 == 0  # a class-stratified subset of n images keeps all n: whole batches are timed
    assert 10 * test_pc >= a.resnet_batch
    if tiny:  # the tiny stages read the tiny entries' folder
        assert train_pc <= gpu_run.TINY_TRAIN_PER_CLASS and test_pc <= gpu_run.TINY_TEST_PER_CLASS
    else:  # the entries' estimates read the bench_train row that trains as the track does on CUDA
        import torch
        import yaml

        track = yaml.safe_load((ROOT / "leaderboards" / "cifar10-linf-fast" / "track.yaml").read_text())
        assert gpu_run.bench_setting(track["train"], torch.device("cuda")) == "bf16+CL compiled"
        assert t.compile and "pgd-at" in t.defenses.split(",")  # bench_train adds that row with --compile


@pytest.mark.skipif(not TAR.exists(), reason="the JPEG CIFAR-10 archive is not on this machine")
def test_bench_train_divides_by_the_images_it_trains_and_refuses_a_folder_too_small(tmp_path):
    import _common as C
    import bench_train

    folder = C.cifar_subset(3, 1, tar_path=TAR)  # 2 training images per class after validation: 20 in all
    argv = ["--defenses", "pgd-at", "--width", "0.125", "--repeats", "1", "--no-fp32", "--cifar", str(folder)]
    with pytest.raises(SystemExit, match="holds 20 training images.*fewer than --batch-size x --batches = 40"):
        bench_train.main(argv + ["--batch-size", "8", "--batches", "5", "--out", str(tmp_path / "no.json")])
    # 16 asked for; the class-stratified subset keeps 1 per class, so a call trains 10 images
    bench_train.main(argv + ["--batch-size", "8", "--batches", "2", "--out", str(tmp_path / "b.json")])
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["data"]["train_images"] == 10
    for row in res["rows"]:
        assert row["images_per_s"] == pytest.approx(10 / row["median_s"])


def test_a_broken_torch_compile_is_found_by_the_probe_and_the_entries_train_eager(monkeypatch):
    """Where torch.compile fails (no triton, no C++ compiler), entries of a compiling track run eager."""
    import gpu_run
    import torch
    import yaml

    from rfbench.benchmark.runner import load_run_config, resolve_run

    def broken(model, *a, **kw):
        def fail(*args):
            raise RuntimeError("Cannot find a working triton installation\nmore detail")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    probe = gpu_run.compile_probe(torch.device("cpu"))
    assert probe["compile_ok"] is False and probe["compile_error"] == ("RuntimeError: Cannot find a working "
                                                                        "triton installation")
    track_path = ROOT / "leaderboards" / "cifar10-linf-fast" / "track.yaml"
    train = yaml.safe_load(track_path.read_text())["train"]
    extra, note = gpu_run.compile_overrides(train, probe)
    assert extra == ["train.compile=false"] and "triton" in note
    assert "--compile" not in gpu_run.bench_plan(False, compile_ok=False)[1]
    assert "--compile" in gpu_run.bench_plan(False, compile_ok=True)[1]
    run = resolve_run(load_run_config(track_path), defense="pgd-at", seed=0, out="/tmp/unused", overrides=extra)
    assert run.train.compile is False
    assert resolve_run(load_run_config(track_path), defense="pgd-at", seed=0, out="/tmp/unused").train.compile
    assert gpu_run.compile_overrides(train, {**probe, "compile_ok": True}) == ([], None)


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="inductor's CPU backend needs a C++ compiler")
def test_the_compile_probe_passes_where_torch_compile_works():
    import gpu_run
    import torch

    probe = gpu_run.compile_probe(torch.device("cpu"))
    assert probe["compile_ok"] is True, probe["compile_error"]


def test_the_archive_location_is_one_setting_that_the_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv(cifar10_jpeg.ARCHIVE_ENV, raising=False)
    assert cifar10_jpeg.archive_path() == Path(cifar10_jpeg.DEFAULT_ARCHIVE)
    monkeypatch.setenv(cifar10_jpeg.ARCHIVE_ENV, str(tmp_path / "c.tar.gz"))
    assert cifar10_jpeg.archive_path() == tmp_path / "c.tar.gz"
    import _common as C

    assert C.CIFAR_TAR == TAR  # the timing scripts and the tests read the same setting


def test_the_archive_is_extracted_to_a_ram_disk_when_there_is_one(tmp_path, monkeypatch):
    import tempfile

    import gpu_run

    assert gpu_run.default_work_dir(tmp_path) == tmp_path / "rfbench-gpu-data"  # (if tmp_path has 1 GiB free)
    assert gpu_run.default_work_dir(tmp_path / "absent") == Path(tempfile.gettempdir()) / "rfbench-gpu-data"
    assert gpu_run.parse_args(["--work-dir", str(tmp_path)]).work_dir == str(tmp_path)
    monkeypatch.setattr(gpu_run, "RAM_DISK_MIN_FREE", 2**62)  # a RAM disk too small for the archive: not used
    assert gpu_run.default_work_dir(tmp_path) == Path(tempfile.gettempdir()) / "rfbench-gpu-data"
