"""One command for a short GPU session: ceilings, attack and training timings, then cifar10-linf-fast entries.

::

    python perf/gpu_run.py --data DIR --out OUTDIR --budget-s 540
    python perf/gpu_run.py --tiny --out /tmp/gpu-tiny          # the same path on a CPU, in a few minutes
    python perf/gpu_run.py --prepare CARRY_DIR                 # on a machine with network: wheels + data

Stages, in order (each writes ``OUTDIR/gpu_run.json`` when it ends, so a
stopped run leaves its partial results):

1. ``ceilings``: device, torch version, measured bf16 and fp32 GEMM TFLOP/s, device
   copy bandwidth (GB/s, bytes read plus written), and whether ``torch.compile`` works
   (a small conv net; where it does not, the entries train eager and say so, and the
   train stage leaves out its compiled rows; ``--tiny`` compiles nothing and skips the probe);
2. ``attacks``: ``perf/bench_attacks.py`` on ResNet-18: PGD-20 of
   rfbench against ``torchattacks.PGD`` (fp32 bit-identity check, fp32
   channels-last, bf16, bf16 + channels-last) -> ``OUTDIR/bench_attacks.json``;
3. ``train``: ``perf/bench_train.py``: PGD-10 AT steps of ResNet-18,
   rfbench (bf16 + channels-last, eager and compiled) against the
   published-style reference loop -> ``OUTDIR/bench_train.json``;
4. ``entries``: ``cifar10-linf-fast`` runs in priority order (``pgd-at``,
   ``trades``, then the others), each a full ``rfbench run`` of the track
   (ranked checkpoint ``best`` only) into ``OUTDIR/runs/`` and an entry,
   checked, in ``OUTDIR/leaderboards/<track>/``.

Before each stage the remaining work is estimated (for entries: the run's
FLOP as ``rfbench reproduce --dry-run`` counts them, at the GFLOP/s measured
in stages 2-3 for the same precision); a stage that would not finish inside ``--budget-s`` is
skipped, never started.  A watchdog interrupts a stage that overruns anyway
(training saves a resumable state; the evaluation's flag file keeps the
finished batches) and the script still writes its JSON and prints the
summary table last.  CUDA graphs are not implemented.

Data and labelling: ``--data`` is real CIFAR-10 (a folder with
``cifar-10-batches-py/``), or the JPEG copy (``cifar10-jpeg.tar.gz`` or the
folder it extracts to, ``train/`` + ``test/``).  The JPEG copy is dataset
``cifar10-jpeg`` (lossy re-encoding, not CIFAR-10's pixels): its entries go to
a track of their own, ``cifar10-jpeg-linf-fast`` (the ``cifar10-linf-fast``
track with ``dataset: cifar10-jpeg``, written into ``OUTDIR/leaderboards/``),
and ``rfbench leaderboard check`` refuses them in a real-CIFAR track.

On the GPU machine (no network; torch, torchvision, pandas, tabulate, tqdm,
matplotlib, PyYAML, scipy, safetensors, requests already there), after
``--prepare .gpu-carry`` here::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-carry/wheels/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    python3 perf/gpu_run.py --data .gpu-carry/cifar10-jpeg.tar.gz --out $OUT --budget-s 540 --over-budget start
    python3 perf/gpu_run.py --data .gpu-carry/cifar10-jpeg.tar.gz --out $OUT --budget-s 240 --over-budget start \
        --skip-bench                                                  # if time is left: finishes and goes on

No ``pip install`` of rfbench: with the checkout on ``PYTHONPATH``, ``import
rfbench`` finds ``rfbench.benchmark`` and the other subpackages in it.
(``docs/performance.md``, "GPU run", has the exact command lines.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path

import _common as C
import torch

from rfbench.core.io import atomic_write_json

TRACK = "cifar10-linf-fast"
JPEG = "cifar10-jpeg"
PRIORITY = ["pgd-at", "trades", "mart", "at-bsl", "cfa", "wat", "dafa", "frl-rwrm"]
WHEELS = ["pyautoattack==0.2.0", "torchattacks==3.5.1"]
CARRY_LIMIT = 64 * 2**20
#: --tiny: training and test images per class and epochs, enough for a model above chance (the entry check
#: refuses a constant or chance-level classifier)
TINY_TRAIN_PER_CLASS, TINY_TEST_PER_CLASS, TINY_EPOCHS = 52, 20, 6


# -- budget -------------------------------------------------------------------------
class Budget:
    """Seconds left of ``--budget-s``; a watchdog sends SIGINT when a stage overruns it."""

    def __init__(self, seconds: float, margin: float):
        self.seconds, self.margin, self.t0 = seconds, margin, time.monotonic()
        self._timer: threading.Timer | None = None

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def allows(self, estimate: float) -> bool:
        return estimate * 1.25 + self.margin <= self.left()

    def stop_reason(self) -> str:
        """Why a stage just ended in KeyboardInterrupt: the watchdog (inside the margin) or someone's Ctrl-C."""
        return "at the budget" if self.left() <= self.margin else "by an interrupt"

    @contextlib.contextmanager
    def watchdog(self):
        delay = max(1.0, self.left() - self.margin / 2)
        self._timer = threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGINT))
        self._timer.daemon = True
        self._timer.start()
        try:
            yield
        finally:
            self._timer.cancel()


class Report:
    """``OUTDIR/gpu_run.json``, rewritten after every stage."""

    def __init__(self, path: Path, data: dict):
        """A rerun into the same OUTDIR keeps the earlier run's stages that it does not redo."""
        earlier = json.loads(path.read_text()) if path.exists() else {}
        commands = earlier.get("earlier_commands", []) + ([earlier["command"]] if "command" in earlier else [])
        self.path = path
        self.data = {**earlier, **data, "earlier_commands": commands}
        self.data.setdefault("stages", {})

    def stage(self, name: str, **fields) -> None:
        self.data["stages"][name] = fields
        self.write()

    def write(self) -> None:
        atomic_write_json(self.path, self.data)


# -- ceilings -------------------------------------------------------------------------
def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """GB/s of a device-to-device copy, counting bytes read plus written (median of ``repeats``)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        C.sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        C.sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / sorted(times)[len(times) // 2] / 1e9


def compile_probe(device: torch.device) -> dict:
    """Whether ``torch.compile`` (default backend) builds and runs a small conv net's forward and backward here.

    The track trains compiled on CUDA; a machine whose compiler stack is missing (no triton, no C++
    compiler) would fail every entry at its first step.  ``{"compile_ok", "compile_s", "compile_error"}``.
    """
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).to(device)
    x = torch.rand(4, 3, 8, 8, device=device)
    t0 = time.perf_counter()
    try:
        torch.compile(net)(x).square().mean().backward()
        C.sync(device)
    except Exception as exc:  # any failure of the compiler stack: entries then train eager
        return {"compile_ok": False, "compile_s": round(time.perf_counter() - t0, 1),
                "compile_error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    return {"compile_ok": True, "compile_s": round(time.perf_counter() - t0, 1), "compile_error": None}


#: --tiny compiles nothing (its stages and track run eager), so it does not probe the compiler
NOT_PROBED = {"compile_ok": None, "compile_s": None, "compile_error": "not probed: --tiny runs eager"}


def ceilings(device: torch.device, tiny: bool) -> dict:
    n, nbytes = (256, 2**24) if tiny else (8192, 2**31)
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "bf16_gemm_tflops": C.matmul_peak(torch.bfloat16, device, n=n, repeats=5) / 1e3,
            "fp32_gemm_tflops": C.matmul_peak(torch.float32, device, n=n, repeats=5) / 1e3,
            "gemm_n": n, "copy_gb_per_s": copy_bandwidth(device, nbytes), "copy_bytes": nbytes,
            **(NOT_PROBED if tiny else compile_probe(device))}


def compile_overrides(train_cfg: dict, ceil: dict) -> tuple[list[str], str | None]:
    """Config overrides for the entries, and why: ``train.compile=false`` where the track compiles and the
    probe found ``torch.compile`` broken (compiling changes no arithmetic, only speed: the entry stays valid)."""
    if train_cfg.get("compile") and ceil.get("compile_ok") is False:
        return ["train.compile=false"], f"trained eager: torch.compile failed in the probe ({ceil['compile_error']})"
    return [], None


# -- data -------------------------------------------------------------------------------
#: free space a RAM disk needs before the archive goes there (60,000 files of at least a 4 KiB page each,
#: about 250 MB; a container's /dev/shm is often only 64 MB)
RAM_DISK_MIN_FREE = 2**30


def default_work_dir(ram_disk: Path = Path("/dev/shm")) -> Path:
    """Where ``--data cifar10-jpeg.tar.gz`` is extracted: a RAM disk with 1 GiB free, else ``$TMPDIR``.

    The archive is 60,000 small files; extracting it took 10 s into ``/dev/shm`` and 35 s onto the
    disk of a 2-core test machine.
    """
    if (ram_disk.is_dir() and os.access(ram_disk, os.W_OK)
            and shutil.disk_usage(ram_disk).free >= RAM_DISK_MIN_FREE):
        return ram_disk / "rfbench-gpu-data"
    return Path(tempfile.gettempdir()) / "rfbench-gpu-data"


def resolve_data(data: str | None, work: Path, tiny: bool) -> dict:
    """``{"dataset", "root", "tar"}`` of ``--data`` (real CIFAR-10 or the JPEG copy; see the module docstring)."""
    if tiny and data is None:
        data = str(C.CIFAR_TAR)
    if data is None:
        raise SystemExit("--data DIR is required (CIFAR-10 folder, or cifar10-jpeg.tar.gz / its folder)")
    path = Path(data).expanduser()
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        if tiny:  # a few images per class, extracted once (perf/_common.py)
            root = C.cifar_subset(TINY_TRAIN_PER_CLASS, TINY_TEST_PER_CLASS, tar_path=path)
            return {"dataset": JPEG, "root": str(root), "tar": str(path)}
        root = work / JPEG
        if not (root / ".complete").exists():
            with tarfile.open(path, "r:gz") as tar:
                tar.extractall(root, filter="data")
            (root / ".complete").touch()
        return {"dataset": JPEG, "root": str(root), "tar": str(path)}
    if (path / "cifar-10-batches-py").is_dir():
        return {"dataset": "cifar10", "root": str(path), "tar": None}
    if (path / "train").is_dir() and (path / "test").is_dir():
        return {"dataset": JPEG, "root": str(path), "tar": None}
    raise SystemExit(f"--data {path}: expected cifar-10-batches-py/ inside, a train/ + test/ image folder, "
                     "or cifar10-jpeg.tar.gz")


def bench_folder(data: dict, train_per_class: int, test_per_class: int) -> str:
    """An imagefolder for the timing benchmarks: a subset of the JPEG archive, or the JPEG folder itself."""
    if data["tar"]:
        return str(C.cifar_subset(train_per_class, test_per_class, tar_path=Path(data["tar"])))
    if data["dataset"] == JPEG:
        return data["root"]
    return ""  # real CIFAR-10 without the JPEG archive: the timing scripts extract their default subset


# -- tracks -------------------------------------------------------------------------------
def derived_track(data: dict, tiny: bool, out_root: Path) -> Path:
    """Write the track the entries are checked against into ``out_root/leaderboards/<id>/track.yaml``.

    Real CIFAR-10: the committed track, unchanged.  JPEG copy: ``dataset: cifar10-jpeg`` and an id and
    title that say so.  ``--tiny``: a reduced protocol (tiny model, few images, reduced AutoAttack) of its own.
    """
    import yaml

    from rfbench.attacks.spec import Threat, build_attacks

    src = C.ROOT / "leaderboards" / TRACK / "track.yaml"
    doc = yaml.safe_load(src.read_text())
    tid = TRACK
    if data["dataset"] == JPEG:
        tid = "cifar10-jpeg-linf-fast"
        doc["track"]["title"] += " [JPEG copy of CIFAR-10: cifar10-jpeg]"
        doc["track"]["description"] = ("Dataset cifar10-jpeg: CIFAR-10 re-encoded as JPEG (lossy), not CIFAR-10. "
                                       + doc["track"]["description"])
        doc["track"]["protocol"]["dataset"] = JPEG
        doc["train"]["dataset"] = JPEG
    if tiny:
        tid += "-tiny"
        doc["track"]["title"] += " [tiny: CPU smoke protocol, not comparable]"
        doc["train"].update(epochs=TINY_EPOCHS, max_train_samples=10 * (TINY_TRAIN_PER_CLASS - 2), val_per_class=2,
                            batch_size=50, compile=False, model_kwargs={"width": 0.125}, steps=2, val_steps=2)
        doc["eval"]["attacks"] = ["pgd:steps=3", "cw:steps=3",
                                  "autoattack:version=custom,attacks=apgd-ce+apgd-t,steps=3,restarts=1"]
        doc["eval"].update(batch_size=100, n_per_class=TINY_TEST_PER_CLASS)
        labels = [a.label for a in build_attacks(doc["eval"]["attacks"], torch.nn.Identity(), Threat(eps=8 / 255))]
        doc["track"]["protocol"].update(attacks=labels, n_per_class=TINY_TEST_PER_CLASS,
                                        test_size=10 * TINY_TEST_PER_CLASS)
        doc["defense_presets"] = {}
    doc["name"] = doc["track"]["id"] = tid
    path = out_root / "leaderboards" / tid / "track.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- estimates -------------------------------------------------------------------------------
def bench_setting(train_cfg: dict, device: torch.device) -> str:
    """The ``bench_train`` row label that runs as the track's training will: ``fp32``, ``bf16+CL`` or compiled."""
    from rfbench.benchmark.train.runtime import autocast_dtype

    if autocast_dtype(str(train_cfg.get("amp", "auto")), device) is None:
        return "fp32"
    return "bf16+CL compiled" if train_cfg.get("compile") else "bf16+CL"


def throughputs(out: Path, setting: str) -> dict:
    """GFLOP/s measured by the benchmark stages: training as the entries train (``setting``), fp32 attacks.

    None where a stage did not run.  The FLOP behind them are counted as
    :mod:`rfbench.benchmark.runner.cost` counts a run's work.
    """
    t = {"train_gflops": None, "train_warmup_s": None, "attack_gflops": None, "train_setting": setting}
    bt = out / "bench_train.json"
    if bt.exists():
        rows = {r["contender"]: r for r in json.loads(bt.read_text())["rows"]}
        row = rows.get(f"rfbench pgd-at {setting}")
        if row:
            t["train_gflops"], t["train_warmup_s"] = row["gflop_per_s"], row.get("warmup_s")
    ba = out / "bench_attacks.json"
    if ba.exists():
        for r in json.loads(ba.read_text())["results"]:
            rows = {x["contender"]: x for x in r["rows"]}
            if "rfbench fp32" in rows:
                t["attack_gflops"] = rows["rfbench fp32"]["gflop_per_s"]
    return t


def entry_estimate(run, tput: dict, ceil: dict) -> tuple[float, str]:
    """Seconds one run should take, and how the figure was obtained ("measured" throughputs or "assumed").

    The work is :func:`~rfbench.benchmark.runner.cost.run_cost` (training, validation and every
    evaluation attack, AutoAttack counted on all test images: an upper bound, since it runs on the
    survivors of PGD and CW); the rates are those just measured, or a stated fraction of the GEMM ceiling.
    """
    from rfbench.benchmark.runner.cost import run_cost

    cost = run_cost(run)
    train_rate, attack_rate = tput["train_gflops"], tput["attack_gflops"]
    how = f"measured (training as 'rfbench pgd-at {tput['train_setting']}', attacks as 'rfbench fp32')"
    if not train_rate or not attack_rate:  # no benchmark stage: a fraction of the GEMM ceiling, stated as assumed
        train_dtype = "fp32" if tput["train_setting"] == "fp32" else "bf16"
        how = f"assumed (30% of the {train_dtype} GEMM ceiling for training, 10% of the fp32 one for attacks)"
        train_rate = 0.3 * ceil[f"{train_dtype}_gemm_tflops"] * 1e3
        attack_rate = 0.1 * ceil["fp32_gemm_tflops"] * 1e3
    train = cost.train_flop / (train_rate * 1e9) + (tput["train_warmup_s"] or 0.0)
    return train + cost.eval_flop / (attack_rate * 1e9), how


# -- stages -------------------------------------------------------------------------------
def bench_plan(tiny: bool, compile_ok: bool = True) -> tuple[list[str], list[str], tuple[int, int],
                                                             tuple[float, float]]:
    """Arguments of the ``attacks`` and ``train`` stages, the images per class they need, their time estimates.

    The per-class counts follow from the arguments: ``bench_attacks`` attacks one batch of
    ``--resnet-batch`` test images; ``bench_train`` times ``--batch-size`` x ``--batches`` training
    images, after one image per class goes to validation.  Without a working ``torch.compile``
    (``compile_ok``, the ceilings' probe) the train stage leaves out its compiled rows.
    """
    if tiny:
        a_argv = ["--models", "resnet18", "--width", "0.125", "--resnet-batch", "8", "--steps", "2", "--repeats", "1",
                  "--only", "rfbench fp32,rfbench bf16 + channels-last"]
        t_argv = ["--defenses", "pgd-at", "--width", "0.125", "--batch-size", "10", "--batches", "1", "--repeats",
                  "1"]  # fp32: the tiny entries train as a CPU run does (amp auto = fp32 on a CPU)
        estimates = (30.0, 30.0)
    else:
        a_argv = ["--models", "resnet18", "--resnet-batch", "512", "--repeats", "2"]
        t_argv = ["--defenses", "pgd-at,trades", "--batch-size", "128", "--batches", "10", "--repeats", "2",
                  "--ref-workers", "4"] + (["--compile"] if compile_ok else [])
        estimates = (90.0, 120.0)

    def opt(argv: list[str], flag: str) -> int:
        return int(argv[argv.index(flag) + 1])

    train_pc = -(-opt(t_argv, "--batch-size") * opt(t_argv, "--batches") // 10) + 1
    test_pc = -(-opt(a_argv, "--resnet-batch") // 10)
    return a_argv, t_argv, (train_pc, test_pc), estimates


def run_bench(script: str, argv: list[str]) -> None:
    """``perf/<script>.py`` in-process (its ``main``), so the timings share this process's warm state."""
    mod = __import__(script)
    mod.main(argv)


def run_entries(args, data: dict, budget: Budget, report: Report, device: torch.device, out: Path) -> list[dict]:
    from rfbench.benchmark.leaderboard.schema import load_track
    from rfbench.benchmark.leaderboard.submit import defense_code_path, submit
    from rfbench.benchmark.runner import execute_run, load_run_config, resolve_run
    from rfbench.core.errors import Interrupted

    track_path = derived_track(data, args.tiny, out)
    track = load_track(track_path)
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    ceil = report.data["stages"]["ceilings"]
    train_cfg = track.train_config_for(defenses[0] if defenses else "pgd-at")
    extra, compile_note = compile_overrides(train_cfg, ceil)
    tput = throughputs(out, bench_setting({**train_cfg, "compile": train_cfg.get("compile") and not extra}, device))
    entries = []
    for d in defenses:
        run = resolve_run(load_run_config(track_path), defense=d, seed=args.seed,
                          out=out / "runs" / track.id / f"{d}-s{args.seed}", device=str(device), quiet=True,
                          overrides=[f"train.data_root={data['root']}", "checkpoints=[best]", *extra])
        est, how = entry_estimate(run, tput, ceil)
        rec = {"defense": d, "estimate_s": round(est, 1), "estimate_from": how}
        if compile_note:
            rec["note"] = compile_note
        finished = (run.out / "result.json").exists()  # an earlier run's: only the entry is left to write
        if not (finished or budget.allows(est)):
            if args.over_budget == "skip" or budget.left() <= budget.margin:
                rec["status"] = f"skipped: needs about {est:.0f} s (x1.25 + margin), {budget.left():.0f} s left"
                entries.append(rec)
                report.stage("entries", track=track.id, entries=entries)
                continue
            rec["started_over_budget"] = True
        t0 = time.time()
        try:
            with budget.watchdog():
                run_dir = execute_run(run, quiet=True)
            res = json.loads((run_dir / "result.json").read_text())
            entry = submit(run_dir, track, out, code=defense_code_path(d, C.ROOT), force=True)
            wc, cl = res["checkpoints"]["best"]["summary"]["worst_case"], res["checkpoints"]["best"]["summary"]["clean"]
            rec.update(status="done", seconds=round(time.time() - t0, 1), result=str(run_dir / "result.json"),
                       entry=str(entry), dataset=res["dataset"], clean_mean=cl["mean"], robust_mean=wc["mean"],
                       robust_worst=wc["worst"], train_seconds=res["cost"]["train_seconds"],
                       eval_seconds=res["cost"]["eval_seconds"],
                       epoch_seconds=[r["seconds"] for r in map(json.loads, (run_dir / "train" / "log.jsonl")
                                                                 .read_text().splitlines())])
        except (KeyboardInterrupt, Interrupted):
            rec.update(status=f"stopped {budget.stop_reason()} (resumable: rerun the same command)",
                       seconds=round(time.time() - t0, 1))
            entries.append(rec)
            report.stage("entries", track=track.id, entries=entries)
            break
        except Exception as exc:  # one failed entry must not cost the others
            rec.update(status=f"failed: {type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
        entries.append(rec)
        report.stage("entries", track=track.id, entries=entries)
    return entries


def stage(name: str, report: Report, budget: Budget, estimate: float, fn, *, tiny: bool):
    """Run one stage if it fits the budget; record status, seconds and its output (never raises in a real run)."""
    if not budget.allows(estimate):
        report.stage(name, status=f"skipped: needs about {estimate:.0f} s, {budget.left():.0f} s left")
        return None
    t0 = time.time()
    try:
        with budget.watchdog():
            value = fn()
        report.stage(name, status="done", seconds=round(time.time() - t0, 1), **(value or {}))
        return value
    except KeyboardInterrupt:
        report.stage(name, status=f"stopped {budget.stop_reason()}", seconds=round(time.time() - t0, 1))
    except Exception as exc:
        if tiny:
            raise
        report.stage(name, status=f"failed: {type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5))
    return None


def summary_table(report: Report) -> str:
    from tabulate import tabulate

    rows = []
    for name, s in report.data["stages"].items():
        if name == "entries":
            continue
        rows.append([name, s.get("status", ""), s.get("seconds", "")])
    ratios = report.data.get("ratios", {})
    lines = [tabulate(rows, headers=["stage", "status", "s"])]
    if ratios:
        lines.append(tabulate([[k, f"{v:.2f}" if isinstance(v, float) else v] for k, v in ratios.items()],
                              headers=["ratio", "value"]))
    ent = report.data["stages"].get("entries", {}).get("entries", [])
    if ent:
        lines.append(tabulate([[e["defense"], e["status"][:60], e.get("dataset", ""),
                                "" if "clean_mean" not in e else f"{100 * e['clean_mean']:.1f}",
                                "" if "robust_mean" not in e else f"{100 * e['robust_mean']:.1f}",
                                "" if "robust_worst" not in e else f"{100 * e['robust_worst']:.1f}",
                                e.get("train_seconds", ""), e.get("eval_seconds", ""), e["estimate_s"]] for e in ent],
                              headers=["entry", "status", "dataset", "clean %", "robust %", "worst class %",
                                       "train s", "eval s", "estimate s"]))
    return "\n\n".join(lines)


def ratios(out: Path) -> dict:
    r = {}
    ba = out / "bench_attacks.json"
    if ba.exists():
        for res in json.loads(ba.read_text())["results"]:
            for row in res["rows"]:
                r[f"PGD-{res['steps']} {row['contender']} x torchattacks"] = row["ratio_to_peer"]
                if row["contender"] == "rfbench fp32":
                    r["PGD fp32 bit-identical to torchattacks"] = row["identical_to_peer"]
    bt = out / "bench_train.json"
    if bt.exists():
        for row in json.loads(bt.read_text())["rows"]:
            if row["ratio_to_reference"] is not None and row["kind"] == "rfbench":
                r[f"AT step {row['contender']} x reference"] = row["ratio_to_reference"]
    return r


# -- carrying -------------------------------------------------------------------------------
def prepare(carry: Path, cifar_tar: Path) -> None:
    """Build the carry folder: the two wheels (``pip download --no-deps``) and the JPEG CIFAR-10 archive.

    Both wheels are pure Python (``py3-none-any``).  Their requirements that the GPU image lacks: none
    (torchattacks needs torch, torchvision, scipy, tqdm, requests and numpy; pyautoattack torch and numpy;
    all are in the image).  The folder's total size must stay under 64 MiB.
    """
    wheels = carry / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                    str(wheels), *WHEELS], check=True)
    for whl in wheels.glob("*.whl"):
        if not whl.name.endswith("-py3-none-any.whl"):
            raise SystemExit(f"{whl.name} is not a pure-Python wheel")
        if whl.name.startswith("pyautoattack-"):
            slim_wheel(whl, "pyautoattack/examples/")
    if cifar_tar.exists():
        shutil.copy2(cifar_tar, carry / cifar_tar.name)
    total = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    print(f"{carry}: {total / 2**20:.1f} MiB ({', '.join(sorted(p.name for p in carry.rglob('*') if p.is_file()))})")
    if total > CARRY_LIMIT:
        raise SystemExit(f"{carry} holds {total / 2**20:.1f} MiB, over the 64 MiB that can be carried")


def slim_wheel(whl: Path, drop_prefix: str) -> None:
    """Rewrite ``whl`` without the files under ``drop_prefix`` (and their RECORD lines).

    pyautoattack 0.2.0's wheel is 42 MiB, 44.7 MB of it an example model
    (``pyautoattack/examples/model_test.pt``) that the library never loads;
    without it the wheel is about 0.1 MiB and the carry fits in 64 MiB.
    """
    import zipfile

    tmp = whl.with_suffix(".tmp")
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename.startswith(drop_prefix):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not line.decode().startswith(drop_prefix))
            dst.writestr(item, data)
    tmp.replace(whl)


# -- main -------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Defaults in the option help, and the examples kept as written."""

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Formatter,
                                epilog="examples:\n" + __doc__.split("::\n\n")[1].split("\n\n")[0]
                                + "\n\nstages, budget, data labelling and carrying: the module docstring and "
                                "docs/performance.md (\"GPU run\")")
    p.add_argument("--data", default=None, help="CIFAR-10 folder, or cifar10-jpeg.tar.gz or its extracted folder")
    p.add_argument("--out", default=None, help="output folder (everything is written under it)")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="wall-clock budget (s); nothing starts that cannot end in it, unless --over-budget start")
    p.add_argument("--work-dir", default=None,
                   help="where a --data archive is extracted (default: /dev/shm/rfbench-gpu-data when /dev/shm is "
                        "writable with 1 GiB free, a RAM disk and 3x faster for its 60,000 files, else "
                        "$TMPDIR/rfbench-gpu-data)")
    p.add_argument("--margin-s", type=float, default=20.0, help="seconds kept free at the end")
    p.add_argument("--defenses", default=",".join(PRIORITY), help="entries to run, in priority order")
    p.add_argument("--seed", type=int, default=0, help="training seed of every entry (run folder <defense>-s<seed>)")
    p.add_argument("--skip-bench", action="store_true",
                   help="run only the entries; their estimates use OUTDIR's benchmark JSONs of an earlier run, "
                        "else they are assumed from the GEMM ceiling")
    p.add_argument("--over-budget", choices=["skip", "start"], default="skip",
                   help="an entry estimated not to fit what is left: skip it, or start it anyway; the watchdog "
                        "stops it at the budget and rerunning the same command (e.g. with --skip-bench) resumes it")
    p.add_argument("--tiny", action="store_true", help="the same path on a CPU: tiny model, few images, reduced AutoAttack")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu; --tiny forces cpu")
    p.add_argument("--prepare", default=None, metavar="CARRY_DIR", help="build the carry folder (needs network) and exit")
    p.add_argument("--cifar-tar", default=str(C.CIFAR_TAR), help="JPEG CIFAR-10 archive for --prepare")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prepare:
        prepare(Path(args.prepare), Path(args.cifar_tar))
        return 0
    if not args.out:
        raise SystemExit("--out OUTDIR is required")
    from rfbench.benchmark.train.runtime import resolve_device

    device = torch.device("cpu") if args.tiny else resolve_device(args.device)
    if args.tiny:
        args.defenses = "pgd-at,trades" if args.defenses == ",".join(PRIORITY) else args.defenses
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s, args.margin_s)
    report = Report(out / "gpu_run.json", {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
                                           "tiny": args.tiny, "budget_s": args.budget_s})
    data = resolve_data(args.data, Path(args.work_dir) if args.work_dir else default_work_dir(), args.tiny)
    report.data["data"] = {**data, "note": "cifar10-jpeg is a lossy JPEG copy of CIFAR-10, labelled as such"
                           if data["dataset"] == JPEG else "real CIFAR-10"}
    print(f"device {device}, torch {torch.__version__}, data {data['dataset']} ({data['root']})", flush=True)
    ceil = stage("ceilings", report, budget, 10, lambda: ceilings(device, args.tiny), tiny=args.tiny)
    if ceil:
        print(f"GEMM bf16 {ceil['bf16_gemm_tflops']:.1f} / fp32 {ceil['fp32_gemm_tflops']:.1f} TFLOP/s, "
              f"copy {ceil['copy_gb_per_s']:.1f} GB/s, torch.compile "
              + {True: f"works ({ceil['compile_s']} s)", False: f"FAILED: {ceil['compile_error']}",
                 None: "not probed (--tiny)"}[ceil["compile_ok"]],
              flush=True)
    dev = ["--device", str(device), "--threads", "0" if device.type == "cuda" else "1"]
    if not args.skip_bench:
        a_argv, t_argv, (train_pc, test_pc), (est_a, est_t) = bench_plan(
            args.tiny, (ceil or {}).get("compile_ok") is not False)
        folder = data["root"] if args.tiny else bench_folder(data, train_pc, test_pc)
        cifar = ["--cifar", folder] if folder else []
        stage("attacks", report, budget, est_a, lambda: run_bench(
            "bench_attacks", a_argv + dev + cifar + ["--out", str(out / "bench_attacks.json")]), tiny=args.tiny)
        stage("train", report, budget, est_t, lambda: run_bench(
            "bench_train", t_argv + dev + cifar + ["--out", str(out / "bench_train.json")]), tiny=args.tiny)
        report.data["ratios"] = ratios(out)
        report.write()
    if "ceilings" in report.data["stages"] and report.data["stages"]["ceilings"].get("status") == "done":
        try:
            run_entries(args, data, budget, report, device, out)
        except KeyboardInterrupt:
            pass
    report.data["elapsed_s"] = round(budget.seconds - budget.left(), 1)
    report.write()
    print("\n" + summary_table(report))
    print(f"\nwrote {report.path} ({report.data['elapsed_s']:.0f} s of {args.budget_s:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
