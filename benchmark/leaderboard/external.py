"""Tracks of external models: models trained elsewhere (RobustBench's zoo, a local checkpoint), evaluated, not trained.

A track with ``kind: external`` in its ``track:`` section ranks models as they are
given: nothing is trained, so its entries carry no training config, and the
defense field names no defense (``external``).  Everything else is the same as on
a training track: the entry ranks on its per-sample flags on the track's own test
images (``check``), and ``rfbench leaderboard audit`` re-runs part of the
evaluation with the model's checkpoint.  A track file::

    name: robustbench-cifar10-linf
    track:
      id: robustbench-cifar10-linf
      kind: external
      protocol: {dataset: cifar10, model: any, norm: linf, eps: 0.0313725, attacks: [...],
                 n_per_class: 1000, checkpoint: model}
    train: {dataset: cifar10}        # the dataset (and its data_root); nothing is trained
    eval: {eps: 0.0313725, attacks: [...], n_per_class: 1000, batch_size: 256}
    checkpoints: [model]

``protocol.model: any`` admits every architecture (a track may name one instead).
The workflow (``docs/evaluation.md``, "A per-class view of the zoo")::

    rfbench zoo zoo.yaml --track robustbench-cifar10-linf --out runs/zoo   # the track's evaluation, per model
    rfbench leaderboard submit runs/zoo/Carmon2019Unlabeled --track robustbench-cifar10-linf
    rfbench leaderboard audit leaderboards/robustbench-cifar10-linf/Carmon2019Unlabeled.json \\
        --checkpoint models/cifar10/Linf/Carmon2019Unlabeled.pt

An entry records where its model comes from (``provenance.source``: RobustBench's
name, or a registered architecture with its arguments, and the checkpoint's
sha256), and RobustBench's published AutoAttack accuracy when the zoo file gave it
(``provenance.published_autoattack``), shown beside rfbench's mean.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any

import torch

from rfbench.benchmark.eval.harness import EvalConfig
from rfbench.benchmark.eval.provenance import git_sha, package_versions, portable_command
from rfbench.benchmark.eval.result import EvalResult
from rfbench.benchmark.leaderboard.entry_parts import evaluation_record, flags_name
from rfbench.benchmark.leaderboard.schema import ENTRY_SCHEMA, ID_RULE, Entry, Track, valid_id
from rfbench.benchmark.runner.report import checkpoint_block
from rfbench.core.config import from_dict
from rfbench.core.errors import ConfigError, RfbenchError
from rfbench.core.io import read_json

#: the ``kind`` of a track of external models, and the defense name of each of its entries
EXTERNAL = "external"
#: ``protocol.model`` of an external track that admits every architecture
ANY_MODEL = "any"
#: where a model of an external entry comes from (``provenance.source.kind``)
SOURCES = ("robustbench", "registry")
ROBUSTBENCH_CODE = "https://github.com/RobustBench/robustbench"
#: what ``rfbench zoo`` writes beside each model's evaluation (its name and published number)
ZOO_MODEL_FILE = "zoo_model.json"
#: the keys of an evaluation's model source an entry keeps (no local path)
SOURCE_KEYS = ("kind", "name", "architecture", "model_args", "weights_layout", "input_normalization", "robustbench",
               "checkpoint_sha256", "architecture_code_sha256")


def is_external(track: Track) -> bool:
    return track.info.kind == EXTERNAL


def track_dataset(track: Track) -> str:
    """The dataset an external track evaluates on (its ``train.dataset``, else the protocol's)."""
    return str((track.run.train or {}).get("dataset", track.info.protocol.dataset))


def track_eval_config(track: Track, device: str = "cpu", quiet: bool = True) -> EvalConfig:
    """The evaluation of an external track (its ``eval:`` section), as ``rfbench zoo --track`` and the audit run it."""
    ev = {**(track.run.eval or {}), "device": device, "quiet": quiet, "plot": False, "overwrite": False}
    return from_dict(EvalConfig, ev, where=f"{track.path} eval")


def entry_from_eval(eval_dir: Path, track: Track, root: Path, *, entry_id: str | None = None, name: str | None = None,
                    code: str | None = None, paper: str = "") -> tuple[dict[str, Any], dict[str, Path]]:
    """The entry data of one model's evaluation (``rfbench zoo --track`` or ``rfbench eval``), and its flag file."""
    from rfbench.benchmark.runner.config import slug

    result_path = eval_dir / "result.json"
    if not result_path.is_file():
        raise RfbenchError(f"{eval_dir} holds no finished evaluation (no result.json); run `rfbench zoo FILE --track "
                           f"{track.id}` (or `rfbench eval`) to the end first")
    result = EvalResult.load(result_path)
    prov = result["provenance"]
    source = dict(prov.get("model") or {})
    if source.get("kind") not in SOURCES:
        raise RfbenchError(f"{eval_dir}: an external track ranks RobustBench models or registered architectures with "
                           f"weights, as `rfbench zoo` evaluates them; this evaluation's model is "
                           f"{source.get('kind')!r}")
    zoo = read_json(eval_dir / ZOO_MODEL_FILE) if (eval_dir / ZOO_MODEL_FILE).is_file() else {}
    if not isinstance(zoo, dict) or not isinstance(zoo.get("name", ""), str):
        raise RfbenchError(f"{eval_dir / ZOO_MODEL_FILE} is not what `rfbench zoo` writes (an object with the model's "
                           "name); remove it or evaluate the model again")
    model = str(source.get("name") if source["kind"] == "robustbench" else source.get("architecture"))
    entry_id = entry_id or slug(str(zoo.get("name") or model.split(":")[-1]))
    if not valid_id(entry_id):
        raise ConfigError(f"--id {entry_id[:120]!r}: an entry id is {ID_RULE}")
    if code is None and source["kind"] != "robustbench":
        raise ConfigError("--code is required for a model that is not from RobustBench's zoo: where reviewers can "
                          "read how it was trained (an https:// URL or a repository path)")
    if not source.get("checkpoint_sha256"):
        raise RfbenchError(f"{result_path} records no checkpoint sha256 of its model, so no audit could tie a file "
                           "to it; evaluate it again with this version of rfbench")
    which = track.info.protocol.checkpoint
    block = checkpoint_block(result, "result.json")
    flags = eval_dir / block["flags_file"]
    threads = (prov.get("cpu_threads") or {}).get("threads")
    accelerator = "cuda" if str(prov.get("device", "")).startswith("cuda") else "cpu"
    eval_s = float(prov.get("wall_time_s") or 0.0)
    entry = {
        "schema": ENTRY_SCHEMA,
        "id": entry_id,
        "track": track.id,
        "track_version": track.info.version,
        "name": name or str(zoo.get("name") or model),
        "seed": int(prov.get("seed") or 0),
        "dataset": result["dataset"],
        "model": model,
        "classes": list(result["classes"]),
        "threat": {"norm": block["threat"]["norm"], "eps": block["threat"]["eps"]},
        "defense": {"name": EXTERNAL, "code": code or ROBUSTBENCH_CODE, "args": {}, "paper": paper},
        "evaluations": {which: evaluation_record(block, flags_name(track, entry_id, which, flags), source["checkpoint_sha256"])},
        "cost": {"accelerator": accelerator, "device": str(prov.get("device")), "train_seconds": 0.0,
                 "eval_seconds": round(eval_s, 2), "gpu_hours": round(eval_s / 3600, 4) if accelerator == "cuda" else None,
                 **({"cpu_threads": {"train": [], "eval": [int(threads)] if threads else []}} if accelerator == "cpu" else {})},
        "train_config": {},
        "provenance": {"code": prov.get("code") or git_sha(), "packages": prov.get("packages") or package_versions(),
                       "command": portable_command(prov["command"], [root]) if prov.get("command") else None,
                       "finished_at": prov.get("finished_at"),
                       "source": {k: source[k] for k in SOURCE_KEYS if k in source},
                       "published_autoattack": zoo.get("published_autoattack")},
        "submitted": datetime.date.today().isoformat(),
    }
    return entry, {which: flags}


def external_problems(entry: Entry, track: Track) -> list[str]:
    """What an entry of an external track must hold besides the common protocol (no training, a known model source)."""
    problems = []
    if entry.defense.name != EXTERNAL:
        problems.append(f"defense.name is '{entry.defense.name}' but track {track.id} ranks models as given "
                        f"(kind external): defense.name must be '{EXTERNAL}'")
    if entry.train_config:
        problems.append(f"train_config is not empty, but track {track.id} trains nothing (kind external)")
    if entry.cost.train_seconds != 0:
        problems.append(f"cost.train_seconds is {entry.cost.train_seconds:g}, but track {track.id} trains nothing")
    source = entry.provenance.get("source")
    if not isinstance(source, dict) or source.get("kind") not in SOURCES:
        problems.append(f"provenance.source must say where the model comes from (kind one of {', '.join(SOURCES)})")
    else:
        named = source.get("name") if source["kind"] == "robustbench" else source.get("architecture")
        if named != entry.model:
            problems.append(f"model is '{entry.model}' but provenance.source names {str(named)[:120]!r}")
        if source["kind"] == "robustbench" and not str(entry.model).startswith("robustbench:"):
            problems.append(f"model '{entry.model}' of a RobustBench source must be robustbench:<Name>")
    published = entry.provenance.get("published_autoattack")
    if published is not None and (isinstance(published, bool) or not isinstance(published, (int, float))
                                  or not 0 <= published <= 1):
        problems.append(f"provenance.published_autoattack must be a fraction in [0, 1] or null, got {str(published)[:40]}")
    seed = track_eval_config(track).seed
    if entry.seed != seed:
        problems.append(f"seed is {entry.seed} but track {track.id} evaluates with seed {seed}")
    return problems


def load_external_model(entry: Entry, checkpoint: Path, bundle: Any, workdir: Path, device: str) -> torch.nn.Module:
    """The entry's model built from its recorded source with ``checkpoint`` (a RobustBench model without network)."""
    from rfbench.benchmark.eval import models as M

    source = entry.provenance.get("source") or {}
    if source.get("kind") == "robustbench":
        name = str(entry.model).split(":", 1)[1]
        target = M.robustbench_checkpoint(name, bundle.name, entry.threat.norm, workdir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint, target)
        model, _ = M.from_robustbench(name, bundle.name, entry.threat.norm, workdir)
    else:
        from rfbench.models.layouts import LAYOUTS, NORMALIZATIONS

        layout, norm = str(source.get("weights_layout")), str(source.get("input_normalization"))
        layout, norm = (layout if layout in LAYOUTS else "auto"), (norm if norm in NORMALIZATIONS else "auto")
        model, _ = M.from_registry(entry.model, str(checkpoint), model_args=source.get("model_args") or {},
                                   layout=layout, normalization=norm, num_classes=bundle.num_classes,
                                   in_channels=bundle.in_channels, mean=bundle.mean, std=bundle.std)
    return model.to(device).eval()
