"""The fuzz suite's child process: every reader on mutated and hostile files, under an address-space limit.

Run by ``test_fuzz_readers.py`` as ``python fuzz_readers_child.py WORKDIR CASES SEED``.  After the imports,
the address space is limited to what the process already uses plus ``HEADROOM`` (``RLIMIT_AS``), so a
missing bound ends in a ``MemoryError`` here (reported as a failure) instead of exhausting the machine.
Each case must return normally or raise :class:`RfbenchError`; anything else is printed as
``FAIL reader case: exception`` and the exit status is 1.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import resource
import struct
import sys
import traceback
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rfbench.benchmark.data.idx import read_idx
from rfbench.benchmark.data.imagefolder import _mode_and_size, _open
from rfbench.benchmark.eval.calibrate import CalibrationConfig, CalibrationResult, load_calibration, save_calibration
from rfbench.benchmark.eval.report import load_results
from rfbench.benchmark.train.runtime import read_layout_cache
from rfbench.core.errors import RfbenchError
from rfbench.core.io import load_checkpoint, read_json
from rfbench.core.launch import launch_from_env

#: address space allowed beyond what the interpreter and its imports already map
HEADROOM = 768 << 20


def limit_address_space() -> int:
    with open("/proc/self/status") as fh:
        size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + HEADROOM, size + HEADROOM))
    return size + HEADROOM


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: truncate, flip bits, insert bytes, or overwrite a 4-byte field with a huge number."""
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    b = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(b[: rng.randrange(len(b))])
    if kind == 1:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 2:
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3:
        i = rng.randrange(max(1, len(b) - 3))
        b[i: i + 4] = struct.pack(">I", rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)]))
    else:
        i = rng.randrange(len(b))
        b[i:] = bytes(rng.randrange(256) for _ in range(len(b) - i))
    return bytes(b)


def idx_file(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def png(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def checkpoint(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def legacy_checkpoint(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def zip_bomb() -> bytes:
    src = io.BytesIO(checkpoint({"w": torch.zeros(64 << 20, dtype=torch.uint8)}))  # 64 MiB inflated (built pre-limit)
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, zi.read(info))
    return out.getvalue()


def main() -> int:
    work, cases, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    # -- seeds: valid files of every kind a reader takes, and known bombs (all built before the limit) -----
    labels = idx_file(np.arange(50, dtype=np.uint8) % 10)
    images = idx_file(np_rng.integers(0, 256, (5, 28, 28), dtype=np.uint8))
    gray, rgb = np_rng.integers(0, 256, (8, 8), dtype=np.uint8), np_rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    calib = work / "calib"
    acc = {"clean_acc": [0.5, 0.5], "robust_acc": [0.25, 0.25]}
    save_calibration(calib, CalibrationResult("bias", torch.ones(2), torch.zeros(2), acc, acc, []), work, "best",
                     CalibrationConfig(eps=0.1, alpha=0.01, steps=1, norm="linf"))
    from safetensors.torch import save as st_save

    result = {"schema": "rfbench.result/2", "classes": ["a", "b"], "n_per_class": [1, 1],
              "threat": {"eps": 0.1, "norm": "linf", "steps": 1, "alpha": 0.1}, "attacks": [{"label": "fgsm"}],
              "per_class": {n: [1.0, 0.0] for n in ("clean", "fgsm", "worst_case")},
              "summary": {n: {"mean": 0.5, "worst": 0.0, "worst_class": 1, "gap": 1.0, "std": 0.5, "tail20": 0.0}
                          for n in ("clean", "fgsm", "worst_case")},
              "confusion": {n: [[1, 0], [1, 0]] for n in ("clean", "fgsm", "worst_case")}}
    seeds = {
        "idx": [labels, images, gzip.compress(labels), gzip.compress(images)],
        "image": [png(gray, "PNG"), png(rgb, "PNG"), png(rgb, "PPM"), png(rgb, "JPEG"), png(gray, "BMP")],
        "checkpoint": [checkpoint({"w": torch.ones(3, 3), "meta": {"a": 1}}), checkpoint([1, 2]),
                       st_save({"w": torch.ones(4)}), legacy_checkpoint({"w": torch.ones(1000), "n": [1, 2]})],
        "result": [json.dumps(result).encode()],
        "layout cache": [json.dumps({"k": {"channels_last": True, "default_ms": 1.0, "channels_last_ms": 2.0}}).encode()],
        "calibration": [(calib / "calibration.pt").read_bytes(), (calib / "calibration.json").read_bytes()],
    }
    bombs = {
        "idx": [gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 60000, 4096, 4096) + bytes(4096)),
                gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(256 << 20))],  # 256 MiB of zeros
        "checkpoint": [zip_bomb(), legacy_checkpoint({"w": torch.ones(1000)}).replace(
            b"M\xe8\x03", b"J" + (1 << 28).to_bytes(4, "little"), 1)],
        "image": [png(np.zeros((1, 1), np.uint8), "PNG")[:16] + struct.pack(">II", 65535, 65535)
                  + png(np.zeros((1, 1), np.uint8), "PNG")[24:]],
    }
    suffix = {"idx": "-idx1-ubyte", "image": ".png", "checkpoint": ".pt", "result": ".json", "layout cache": ".json",
              "calibration": ".pt"}
    readers = {
        "idx": lambda p, i: read_idx(p),
        "image": lambda p, i: (_mode_and_size(p), _open(p, lambda im: im.convert("RGB"))),
        "checkpoint": lambda p, i: load_checkpoint(p),
        "result": lambda p, i: (read_json(p), load_results([p])),
        "layout cache": lambda p, i: read_layout_cache(p),
        "calibration": lambda p, i: load_calibration(calib),
    }
    limit = limit_address_space()
    print(f"address space limited to {limit >> 20} MiB", flush=True)
    failures, ran = [], 0
    for kind, group in seeds.items():
        for i, seed_bytes in enumerate(group):
            corpus = [(f"bomb {j}", b) for j, b in enumerate(bombs.get(kind, []))] if i == 0 else []
            corpus += [(f"mutation {n}", mutate(seed_bytes, rng)) for n in range(cases)]
            for name, data in corpus:
                path = work / kind.replace(" ", "-") / f"{i}{suffix[kind]}"
                if kind == "idx" and i >= 2:
                    path = path.with_name(path.name + ".gz")
                if kind == "checkpoint" and i == 2:
                    path = path.with_suffix(".safetensors")
                if kind == "calibration":
                    path = calib / ("calibration.pt" if i == 0 else "calibration.json")
                    original = path.read_bytes()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                ran += 1
                try:
                    readers[kind](path, i)
                except RfbenchError:
                    pass
                except BaseException as exc:  # noqa: BLE001 - exactly what the suite looks for
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    failures.append(f"FAIL {kind} seed {i} {name}: {type(exc).__name__}: {str(exc)[:200]} "
                                    f"({Path(where.filename).name}:{where.lineno})")
                if kind == "calibration":
                    path.write_bytes(original)
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    values = ["", "0", "1", "2", "-1", "abc", "1e3", "99999999999999999999", " 3 ", "\x00", "2.5", "0x10"]
    for _ in range(cases * 4):  # the launch's environment variables
        env = {k: rng.choice(values) for k in names if rng.random() < 0.8}
        ran += 1
        try:
            launch_from_env(env)
        except RfbenchError:
            pass
        except BaseException as exc:  # noqa: BLE001
            failures.append(f"FAIL environment {env}: {type(exc).__name__}: {exc}")
    for line in failures:
        print(line)
    print(f"{ran} cases, {len(failures)} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
