"""Provenance of a result: code version, package versions, device, time, command, model source.

Names written into a result are portable (they mean the same on another machine):

* :func:`dataset_description`: the dataset's name, with a ``scheme:PATH`` source
  reduced to the scheme and the folder's last component (``imagefolder:cifar10-jpeg``),
  never the local absolute path;
* :func:`portable_source`: the architecture's name (a registered name, or
  ``file.py:factory`` without its directory) plus ``architecture_code_sha256``, a
  hash of the source code of the model's own classes (torch's are left out);
  ``additional_data`` is a boolean;
* :func:`samples_digest`: hashes of the evaluated sample positions, labels and
  images, so two results can be checked to be on the same sample set.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import inspect
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

PACKAGES = ("torch", "torchvision", "numpy", "pyautoattack", "torchattacks", "pandas", "robustbench")
REPO_ROOT = Path(__file__).resolve().parents[2]


def git_sha(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"sha": ..., "dirty": bool}`` of the source tree, or ``{"sha": None}`` outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"sha": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that can change a number (None when not installed)."""
    from rfbench.core.version import __version__

    out: dict[str, str | None] = {"rfbench": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(*, cfg: dict, source: dict, device: torch.device, wall_time: float) -> dict[str, Any]:
    """Everything needed to say how a result was produced (``docs/protocol.md``, "What a result reports")."""
    return {
        "config": cfg,
        "seed": cfg.get("seed"),
        "code": git_sha(),
        "packages": package_versions(),
        "device": device_name(device),
        "wall_time_s": round(wall_time, 2),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": portable_command(sys.argv),
        "model": source,
    }


def portable_dataset_name(name: str) -> str:
    """``imagefolder:/data/x/cifar10-jpeg`` -> ``imagefolder:cifar10-jpeg`` (a ``-lt`` suffix is kept); other names unchanged."""
    if ":" not in name:
        return name
    scheme, path = name.split(":", 1)
    suffix = ""
    if path.endswith("-lt") and not Path(path).expanduser().exists():
        path, suffix = path[:-3], "-lt"
    return f"{scheme}:{Path(path.rstrip('/')).name or path}{suffix}"


def dataset_description(dataset: str | dict[str, Any]) -> dict[str, Any]:
    """``{"name": portable name, "root": what kind of source it is, ...}`` of a dataset name or mapping."""
    d = {"name": dataset} if isinstance(dataset, str) else dict(dataset)
    full = str(d.get("name") or "tensors")
    d["name"] = portable_dataset_name(full)
    if "root" not in d:
        if ":" in full:
            scheme = full.split(":", 1)[0]
            d["root"] = f"{scheme} folder '{d['name'].split(':', 1)[1].removesuffix('-lt')}' (local path not recorded)"
        elif full == "tensors":
            d["root"] = "tensors given in Python"
        else:
            d["root"] = f"the {full.removesuffix('-lt')} files (standard release)"
    return d


def architecture_code_hash(model: torch.nn.Module) -> str | None:
    """SHA-256 (16 hex digits) of the source of every class among ``model.modules()`` outside torch itself."""
    h = hashlib.sha256()
    seen = False
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        if cls.__module__.split(".")[0] == "torch":
            continue
        try:
            code = inspect.getsource(cls)
        except (OSError, TypeError):
            code = ""
        h.update(f"{cls.__module__}.{cls.__qualname__}\n{code}\n".encode())
        seen = True
    return h.hexdigest()[:16] if seen else None


def portable_architecture(name: Any) -> str | None:
    """A registered name as it is; ``/abs/dir/my_nets.py:build`` -> ``my_nets.py:build``."""
    if name is None:
        return None
    name = str(name)
    file, sep, factory = name.rpartition(":")
    if sep and file.endswith(".py"):
        return f"{Path(file).name}:{factory}"
    return name


def portable_source(source: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """``source`` with a portable ``architecture``, its ``architecture_code_sha256`` and a boolean ``additional_data``."""
    out = dict(source)
    arch = out.get("architecture")
    if isinstance(arch, dict):  # a training config's model section
        arch = arch.get("name")
    out["architecture"] = portable_architecture(arch) or type(model).__name__
    out["architecture_code_sha256"] = architecture_code_hash(model)
    if not isinstance(out.get("additional_data"), bool):
        if out.get("kind") == "robustbench":
            out["additional_data_note"] = "not known to rfbench; see the model's RobustBench entry"
        out["additional_data"] = False
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def samples_digest(data: Any) -> dict[str, Any]:
    """``{"n", "index_sha256", "labels_sha256", "images_sha256"}`` of the evaluated samples (``x``, ``y``, ``index``)."""
    x = data.x.detach().cpu().contiguous()
    return {
        "n": int(len(data.y)),
        "index_sha256": _sha(np.ascontiguousarray(data.index.numpy().astype(np.int64)).tobytes()),
        "labels_sha256": _sha(np.ascontiguousarray(data.y.numpy().astype(np.int64)).tobytes()),
        "images_sha256": _sha(x.view(-1).view(torch.uint8).numpy().tobytes()),
        "images_dtype": str(x.dtype).removeprefix("torch."),
    }


# -- commands and defenses, as another machine can read them ------------------------------------------
#: what stands for a directory outside the repository and the working directory in a recorded command
ELSEWHERE = "<path>"


def _portable_path(text: str, bases: list[Path]) -> str:
    """An absolute path made relative to the first of ``bases`` that holds it, else ``<path>/NAME``."""
    p = Path(text)
    for base in bases:
        try:
            return p.resolve().relative_to(base.resolve()).as_posix() or "."
        except ValueError:
            continue
    return f"{ELSEWHERE}/{p.name}"


def portable_token(token: str, bases: list[Path]) -> str:
    """One command-line word with its absolute paths made portable (``--out=/x/y``, ``/x/f.py:Class`` too)."""
    if token.startswith("--") and "=" in token:
        flag, value = token.split("=", 1)
        return f"{flag}={portable_token(value, bases)}"
    if "=" in token and not token.startswith("/"):  # key=value override
        key, value = token.split("=", 1)
        return f"{key}={portable_token(value, bases)}" if value.startswith("/") else token
    head, sep, tail = token.rpartition(":")
    if sep and head.startswith("/") and tail and "/" not in tail:  # /abs/file.py:Class
        return f"{_portable_path(head, bases)}:{tail}"
    return _portable_path(token, bases) if token.startswith("/") else token


def portable_command(argv: list[str] | str, bases: list[Path] | None = None) -> str:
    """The command as the user would retype it elsewhere: ``rfbench`` for the program (whatever path
    ran it: ``.../bin/rfbench``, ``.../rfbench/__main__.py``, ``-m rfbench``), absolute paths relative to
    the repository or the working directory (``bases``, default both), and ``<path>/NAME`` for a path
    outside them."""
    words = argv.split() if isinstance(argv, str) else list(argv)
    bases = bases if bases is not None else [REPO_ROOT.parent if REPO_ROOT.name == "src" else REPO_ROOT, Path.cwd()]
    if words and (Path(words[0]).name in ("rfbench", "__main__.py", "-m") or words[0].endswith("python")):
        words = words[1:]
        if words and words[0] in ("-m", "rfbench"):
            words = words[1:] if words[0] == "rfbench" else words[2:]
    return " ".join(["rfbench", *(portable_token(w, bases) for w in words)])


def defense_provenance(defense: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """What an entry needs to say which defense ran: its resolved ``Config`` (every hyper-parameter, the
    defaults filled in), the paper the registry cites, and, for a plugin (``file.py:Class``,
    ``module:Class`` or an installed entry point), the sha256 of the file that defines it.

    The defense class is imported, so call this only where the command line allowed that (as in
    ``rfbench run``, which trained it)."""
    import dataclasses

    from rfbench.core.config import from_dict
    from rfbench.defenses import DEFENSES
    from rfbench.defenses.registry import get_defense_class

    cls = get_defense_class(defense)
    cfg = from_dict(cls.Config, dict(args or {}), where=f"defense '{defense}'")
    out: dict[str, Any] = {"config": dataclasses.asdict(cfg), "paper": registry_paper(defense)}
    if defense not in DEFENSES:
        source = inspect.getsourcefile(cls)
        if source:
            out["code_file"] = Path(source).name
            out["code_sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return out


def registry_paper(defense: str) -> str:
    """The paper a registered defense's description cites (``DAFA (Lee et al., ICLR 2024)`` -> ``Lee et al.,
    ICLR 2024``); empty for one that cites none (or is not registered)."""
    import re

    from rfbench.defenses import DEFENSES

    if defense not in DEFENSES:
        return ""
    m = re.search(r"\(([^()]*?\b(?:19|20)\d{2}\b[^()]*)\)", DEFENSES.describe(defense).split(" [")[0])
    return re.sub(r",\s*Eq\..*$", "", m.group(1)).strip() if m else ""
