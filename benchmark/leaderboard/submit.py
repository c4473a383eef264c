"""``rfbench leaderboard submit RUN_DIR --track T``: turn a finished ``rfbench run`` into a checked entry.

The entry is built from the run's ``result.json`` (``rfbench.run/1``) and its
trainer ``config.yaml``, checked against the track with the run's own flag
files, and only then written.  Entry and flags are replaced as a pair: each
flag file is named by its content (``leaderboards/<track>/flags/<id>-<checkpoint>-<sha256[:12]>.npz``)
and written first, beside the old entry's flags, which stay untouched; then the
entry (``leaderboards/<track>/<id>.json``) is replaced by one atomic rename,
the single moment the new pair takes over; only then are the old entry's flag
files removed.  A kill or a full disk at any point leaves the old pair or the
new pair (and at worst an unreferenced flag file).  The entry records the
sha256 of each evaluated checkpoint, which ``rfbench leaderboard audit`` requires.
"""

from __future__ import annotations

import datetime
import inspect
import logging
from pathlib import Path
from typing import Any

import yaml

from rfbench.benchmark.eval.provenance import defense_provenance, portable_command, registry_paper
from rfbench.benchmark.leaderboard.check import check_entry, check_entry_file
from rfbench.benchmark.leaderboard.entry_parts import evaluation_record, flags_name
from rfbench.benchmark.leaderboard.history import append_ledger
from rfbench.benchmark.leaderboard.paths import is_url
from rfbench.benchmark.leaderboard.schema import (
    ENTRY_SCHEMA,
    ID_RULE,
    Entry,
    EntryError,
    Track,
    valid_id,
)
from rfbench.benchmark.runner.config import slug
from rfbench.benchmark.runner.report import RUN_SCHEMA
from rfbench.core.errors import ConfigError, RfbenchError, one_line
from rfbench.core.io import atomic_write_bytes, atomic_write_json, read_json
from rfbench.core.io.atomic import read_text_bounded
from rfbench.core.io.digest import file_sha256
from rfbench.defenses import DEFENSES

log = logging.getLogger(__name__)

LOCAL_KEYS = ("out", "init")  # machine-local paths, not part of an entry


def defense_code_path(defense: str, root: Path) -> str:
    """Repository-relative source file of a defense (built-in or a plugin file inside the repository).

    A ``file.py:Class`` plugin is located by its path, never imported (submitting runs no code)."""
    from rfbench.defenses.registry import _entry_points, get_defense_class

    where = defense.rpartition(":")[0]
    if defense not in DEFENSES and defense not in _entry_points() and ":" in defense:
        if not (where.endswith(".py") or "/" in where):
            raise ConfigError(f"defense '{defense}' is a module, which submit does not import to find its file; "
                              "pass --code PATH-or-https://... (where reviewers can read it)")
        path = Path(where).expanduser().resolve()
    else:
        source = inspect.getsourcefile(get_defense_class(defense))
        path = Path(source).resolve() if source else None
    if path is None or not path.is_relative_to(root.resolve()):
        raise ConfigError(f"the code of defense '{defense}' is outside the repository ({path}); "
                          "pass --code https://... (where reviewers can read it)")
    return path.relative_to(root.resolve()).as_posix()


def entry_provenance(run: dict[str, Any], defense: str, args: dict[str, Any] | None, root: Path) -> dict[str, Any]:
    """The entry's portable ``command`` (no path of the submitter's machine) and ``defense`` record: the
    resolved Config, the registry's paper and a plugin file's sha256 (:func:`defense_provenance`), as the
    run recorded them, or worked out here for a registered defense (a run from before they were recorded)."""
    record = run.get("defense_provenance")
    if record is None and defense in DEFENSES:
        record = defense_provenance(defense, args)
    command = run.get("provenance", {}).get("command")
    return {"command": portable_command(command, [root]) if command else None, "defense": record}


def checkpoint_file(run_dir: Path, which: str) -> Path:
    """The checkpoint file an evaluated model ``which`` of a run was loaded from (as ``rfbench run`` loads it)."""
    from rfbench.benchmark.train.rundir import CHECKPOINTS

    return run_dir / "train" / CHECKPOINTS["best" if which.endswith("best") else "last"]


def entry_from_run(run_dir: Path, track: Track, root: Path, *, entry_id: str | None = None, name: str | None = None,
                   code: str | None = None, paper: str = "") -> tuple[dict[str, Any], dict[str, Path]]:
    """The entry data of a finished run, and the run's flag file per checkpoint."""
    result_path = run_dir / "result.json"
    if not result_path.exists():
        raise RfbenchError(f"{run_dir} holds no finished run (no result.json); run `rfbench run` to the end first")
    run = read_json(result_path)
    if not isinstance(run, dict):
        raise RfbenchError(f"{result_path} is not an `rfbench run` result (a JSON {type(run).__name__}, not an object)")
    if run.get("schema") != RUN_SCHEMA:
        raise RfbenchError(f"{result_path} is not an `rfbench run` result (schema {run.get('schema')!r})")
    train_cfg = _train_config(run_dir)
    try:
        return _entry_from_parts(run_dir, run, train_cfg, track, root, entry_id=entry_id, name=name, code=code,
                                 paper=paper)
    except RfbenchError:  # already one line (ConfigError is a ValueError, UnknownNameError a KeyError)
        raise
    except (KeyError, TypeError, AttributeError, ValueError, StopIteration) as exc:
        if isinstance(exc, KeyError):
            why = f"a field is missing: {exc.args[0]!r}"
        elif isinstance(exc, StopIteration):
            why = "its checkpoints are empty"
        else:
            why = f"a field has the wrong type or value ({one_line(str(exc))[:200]})"
        raise RfbenchError(f"{result_path} is not a complete `rfbench run` result: {why}; submit the directory of a "
                           "run that `rfbench run` finished") from None


def _train_config(run_dir: Path) -> dict[str, Any]:
    """The run's trainer ``config.yaml`` (a bounded regular file, a mapping with a defense and a seed), or one line."""
    path = run_dir / "train" / "config.yaml"
    try:
        cfg = yaml.safe_load(read_text_bounded(path))
    except yaml.YAMLError as exc:
        raise RfbenchError(f"corrupt file {path}: not valid YAML ({one_line(str(exc))[:200]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("defense"), str) or not isinstance(cfg.get("seed"), int):
        raise RfbenchError(f"{path} is not a training config of rfbench (a mapping with a defense name and an "
                           "integer seed); submit the directory of a run that `rfbench run` finished")
    return cfg


def _entry_from_parts(run_dir: Path, run: dict[str, Any], train_cfg: dict[str, Any], track: Track, root: Path, *,
                      entry_id: str | None, name: str | None, code: str | None,
                      paper: str) -> tuple[dict[str, Any], dict[str, Path]]:
    """:func:`entry_from_run` once the run's two files are read; a missing or mistyped field raises KeyError/TypeError."""
    defense = train_cfg["defense"]
    entry_id = entry_id or f"{slug(defense)}-s{train_cfg['seed']}"
    if not valid_id(entry_id):
        raise ConfigError(f"--id {entry_id[:120]!r}: an entry id is {ID_RULE}")
    code = code or defense_code_path(defense, root)
    if ":" in code and not is_url(code):
        raise ConfigError(f"--code must be a repository-relative path or an https:// URL, got '{code}'")
    blocks = run["checkpoints"]
    first = next(iter(blocks.values()))
    run_flags = {w: run_dir / b["flags_file"] for w, b in blocks.items()}
    for w, path in run_flags.items():
        if not path.is_file():
            raise RfbenchError(f"{run_dir}: the flag file of its {w!r} evaluation, {path}, is missing or not a regular "
                               "file; submit the directory of a run that `rfbench run` finished")
    flags_rel = {w: flags_name(track, entry_id, w, run_flags[w]) for w in blocks}
    ckpt = {w: checkpoint_file(run_dir, w) for w in blocks}
    ckpt_sha = {w: file_sha256(p) if p.is_file() else None for w, p in ckpt.items()}
    run_config = {k: v for k, v in run["config"].items() if k != "out"}
    entry = {
        "schema": ENTRY_SCHEMA,
        "id": entry_id,
        "track": track.id,
        "track_version": track.info.version,
        "name": name or defense,
        "seed": train_cfg["seed"],
        "dataset": run["dataset"],
        "model": train_cfg["model"],
        "classes": list(first["classes"]),
        "threat": {"norm": first["threat"]["norm"], "eps": first["threat"]["eps"]},
        "defense": {"name": defense, "code": code, "args": train_cfg.get("defense_args", {}),
                    "paper": paper or registry_paper(defense), "fidelity": train_cfg.get("fidelity", "paper")},
        "evaluations": {w: evaluation_record(b, flags_rel[w], ckpt_sha[w]) for w, b in blocks.items()},
        "cost": {k: run["cost"][k] for k in ("accelerator", "device", "train_seconds", "eval_seconds", "gpu_hours",
                                             "cpu_threads") if k in run["cost"]},
        "train_config": {k: v for k, v in train_cfg.items() if k not in LOCAL_KEYS},
        "provenance": {**run["provenance"], **entry_provenance(run, defense, train_cfg.get("defense_args"), root),
                       "run_config": run_config, "stages": run.get("stages", {}),
                       "pretrained": run.get("pretrain") is not None},
        "submitted": datetime.date.today().isoformat(),
    }
    return entry, run_flags


def identical_committed(entry: Entry, flags: dict[str, Path], track: Track, root: Path) -> str | None:
    """The id of a committed entry of ``track`` whose per-sample predictions equal the new entry's, if any."""
    from rfbench.benchmark.leaderboard.ranking import entry_data, identical_to

    ck = track.info.protocol.checkpoint
    committed = []
    for path in sorted(track.path.parent.glob("*.json")):
        if path.stem == entry.id:
            continue
        try:
            committed.append(entry_data(check_entry_file(path, root), ck, root))
        except (EntryError, KeyError):
            continue  # a rejected entry is no reference; `rfbench leaderboard check` reports it
    same = identical_to(entry_data(entry, ck, root, flags_path=flags.get(ck)), committed)
    return same.id if same else None


def submit(run_dir: str | Path, track: Track, root: Path, *, entry_id: str | None = None, name: str | None = None,
           code: str | None = None, paper: str = "", force: bool = False, allow_identical: bool = False) -> Path:
    """Check the run's entry against ``track``, then write its flag files and the entry; returns the entry path.

    On a track of external models (``kind: external``) ``run_dir`` is one model's evaluation directory
    (``rfbench zoo --track`` writes ``OUT/<model>/``), see :mod:`~rfbench.benchmark.leaderboard.external`.

    An entry whose per-sample predictions equal a committed entry's is refused (it would be one result counted
    twice, shown unranked) unless ``allow_identical``.
    """
    from rfbench.benchmark.leaderboard.external import entry_from_eval, is_external

    run_dir = Path(run_dir)
    build = entry_from_eval if is_external(track) else entry_from_run
    entry, run_flags = build(run_dir, track, root, entry_id=entry_id, name=name, code=code, paper=paper)
    target = root / "leaderboards" / track.id / f"{entry['id']}.json"
    if target.exists() and not force:
        raise RfbenchError(f"{target} exists; choose another --id or pass --force to replace it")
    checked = check_entry(entry, where=f"entry from {run_dir}", root=root, entry_path=target, track=track,
                          flags=run_flags)
    same = identical_committed(checked, run_flags, track, root)
    if same and not allow_identical:
        raise RfbenchError(f"the run's per-sample predictions equal those of the committed entry {same}: one result "
                           "counted twice, which the page would show unranked; pass --allow-identical to submit it "
                           "anyway")
    write_pair(target, entry, run_flags, root)
    append_ledger(target.parent, entry["id"], file_sha256(target))
    check_entry_file(target, root)
    log.info("wrote %s", target)
    return target


def _referenced_flags(target: Path, root: Path) -> set[Path]:
    """The flag files the entry at ``target`` names now (none when it is missing or unreadable)."""
    from rfbench.benchmark.leaderboard.paths import UnsafePathError, safe_repo_path

    try:
        old = read_json(target)
        names = [ev.get("flags_file") for ev in old["evaluations"].values()]
        return {safe_repo_path(n, root, "flags_file") for n in names if isinstance(n, str)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RfbenchError, UnsafePathError):
        return set()


def write_pair(target: Path, entry: dict[str, Any], run_flags: dict[str, Path], root: Path) -> None:
    """Replace the entry at ``target`` and its flag files as a pair (see the module docstring)."""
    old = _referenced_flags(target, root)
    new = set()
    for which, src in run_flags.items():
        dst = root / entry["evaluations"][which]["flags_file"]
        new.add(dst.resolve())
        if not (dst.is_file() and file_sha256(dst) == file_sha256(src)):  # content-named: never the old pair's file
            atomic_write_bytes(dst, src.read_bytes())
    atomic_write_json(target, entry)  # the commit point: the new pair from here on
    others = set().union(*(_referenced_flags(p, root) for p in target.parent.glob("*.json") if p.name != target.name))
    for path in old - new - others:  # never a file another entry names
        path.unlink(missing_ok=True)
