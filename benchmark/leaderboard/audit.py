"""``rfbench leaderboard audit ENTRY --checkpoint FILE``: re-run a seeded random sample of an entry's evaluation.

``check`` proves that an entry's numbers follow from its per-sample flags on the
track's test images; it cannot prove that the flags are what the model does.  The
audit re-executes part of the evaluation with the submitted checkpoint and
compares, image by image (``docs/leaderboard-threat-model.md``):

1. the checkpoint file must be the one the entry records (``checkpoint_sha256`` of
   the ranked checkpoint); another file is refused;
2. a seeded random sample of the evaluation's batches is drawn (whole batches of
   the track's ``eval.batch_size``, until at least ``max(100, 5%)`` of the test
   images are in it, or ``fraction`` instead of 5%; the seed is random unless given, and printed);
3. the entry's flag file, with the sampled batches cleared, is handed to the
   evaluation harness (:func:`rfbench.benchmark.eval.harness.evaluate`) as an
   unfinished evaluation: the harness resumes exactly those batches, with the
   per-batch attack seeds ``batch_seed(seed, attack, batch)`` and the same
   survivor cascade as the original run, and refuses when the model, the attacks,
   the seed, the batch size or the test images differ from those the flags
   record (so the flags must come from this checkpoint);
   On a track of external models the model is rebuilt from the entry's recorded
   source (RobustBench's architecture, or a registered one with its arguments)
   with the checkpoint, and the evaluation is the track's ``eval:`` section;
4. every sampled image the flags call correct (clean) or robust (to an attack)
   that is wrong or falls in the re-run fails the audit.  Images the flags call
   broken but the re-run finds robust are counted, not failed (the submitter
   only under-claimed).

With ``record`` the result is written to ``leaderboards/<track>/audits/<id>.json``
(:func:`write_record`); a track with ``require_audit: true`` ranks only entries
whose record passes and matches the entry (:func:`passing_record`).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rfbench.benchmark.leaderboard.check import check_entry_file
from rfbench.benchmark.leaderboard.evidence import read_flags
from rfbench.benchmark.leaderboard.external import is_external, load_external_model, track_dataset, track_eval_config
from rfbench.benchmark.leaderboard.paths import safe_repo_path
from rfbench.benchmark.leaderboard.schema import Entry, Track, find_track
from rfbench.benchmark.leaderboard.submit import file_sha256
from rfbench.core.errors import RfbenchError

MIN_IMAGES = 100
MIN_FRACTION = 0.05
AUDIT_SCHEMA = "rfbench.audit/1"


@dataclass
class AuditReport:
    entry: str
    track: str
    checkpoint: str  # the ranked checkpoint's name
    checkpoint_sha256: str
    flags_sha256: str
    seed: int
    batches: list[int]
    images: int  # audited images
    total: int  # the entry's test images
    overclaimed: list[int] = field(default_factory=list)  # test indices the flags call correct/robust that fell
    underclaimed: int = 0  # images the flags call wrong/broken that the re-run found correct/robust
    schema: str = AUDIT_SCHEMA
    audited_at: str = ""

    @property
    def passed(self) -> bool:
        return not self.overclaimed

    def text(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        line = (f"audit {verdict}  {self.track}/{self.entry}: {self.images} of {self.total} test images re-run "
                f"(batches {', '.join(map(str, self.batches))}; --seed {self.seed}); ")
        if self.overclaimed:
            shown = ", ".join(map(str, self.overclaimed[:10]))
            line += (f"{len(self.overclaimed)} image(s) the flags call correct or robust fell in the re-run "
                     f"(test images {shown}{', ...' if len(self.overclaimed) > 10 else ''})")
        else:
            line += "every image the flags call correct or robust held"
        if self.underclaimed:
            line += f"; {self.underclaimed} image(s) the flags call broken held (under-claimed, not a failure)"
        return line


def sample_batches(n: int, batch_size: int, seed: int, fraction: float = MIN_FRACTION) -> list[int]:
    """Whole batches drawn at random (``seed``) until they hold at least ``max(100, fraction·n)`` of the ``n`` images."""
    if not MIN_FRACTION <= fraction <= 1:
        raise RfbenchError(f"--fraction must be between {MIN_FRACTION} and 1, got {fraction}")
    need = min(n, max(MIN_IMAGES, math.ceil(fraction * n)))
    n_batches = (n + batch_size - 1) // batch_size
    chosen, images = [], 0
    for b in np.random.default_rng(seed).permutation(n_batches).tolist():
        if images >= need:
            break
        chosen.append(int(b))
        images += min(batch_size, n - b * batch_size)
    return sorted(chosen)


def _outcomes(flags, attacks: list[str]) -> np.ndarray:
    """(N, 1 + A): clean-correct, then robust to each attack."""
    return np.stack([flags.clean_correct, *(flags.robust(a) for a in attacks)], axis=1)


def audit_entry(entry_path: str | Path, checkpoint: str | Path, root: Path, *, seed: int | None = None,
                device: str = "cpu", fraction: float = MIN_FRACTION) -> AuditReport:
    """Re-run a seeded random sample of ``entry_path``'s evaluation with ``checkpoint`` (see the module docstring)."""
    from rfbench.benchmark.data import load_dataset
    from rfbench.benchmark.eval import evaluate
    from rfbench.benchmark.eval.harness import FLAGS_FILE
    from rfbench.benchmark.runner.config import resolve_run
    from rfbench.benchmark.train.rundir import CHECKPOINTS, load_run_model

    entry = check_entry_file(entry_path, root)
    track = find_track(entry.track, root)
    which = track.info.protocol.checkpoint
    ev = entry.evaluation(which)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise RfbenchError(f"checkpoint not found: {checkpoint}")
    if ev.checkpoint_sha256 is None:
        raise RfbenchError(f"{entry.id} records no checkpoint_sha256 for '{which}', so no file can be shown to be its "
                           "checkpoint; resubmit it with `rfbench leaderboard submit` (which records it)")
    sha = file_sha256(checkpoint)
    if sha != ev.checkpoint_sha256:
        raise RfbenchError(f"{checkpoint} has sha256 {sha[:16]}..., but {entry.id} was evaluated with the checkpoint "
                           f"{ev.checkpoint_sha256[:16]}...: refusing to audit it against another file")
    flags_path = safe_repo_path(ev.flags_file or "", root, "flags_file")
    original = read_flags(flags_path, sum(ev.n_per_class), len(ev.attacks))
    external = is_external(track)
    if external:
        cfg = track_eval_config(track, device)
    else:
        run = resolve_run(track.run, defense=entry.defense.name, out="audit", runs_code=False)
        cfg = dataclasses.replace(run.eval, device=device, quiet=True, plot=False, overwrite=False)
    seed = secrets.randbits(31) if seed is None else int(seed)
    batches = sample_batches(len(original.y), cfg.batch_size, seed, fraction)
    rows = np.concatenate([np.arange(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(original.y)))
                           for b in batches])
    with tempfile.TemporaryDirectory(prefix="rfbench-audit-") as tmp:
        run_dir, out = Path(tmp) / "run", Path(tmp) / "eval"
        run_dir.mkdir()
        out.mkdir()
        if external:
            train = track.run.train or {}
            bundle = load_dataset(track_dataset(track), root=train.get("data_root"), test_only=True)
            model = load_external_model(entry, checkpoint, bundle, run_dir, device)
        else:
            kind = "best" if which.endswith("best") else "last"
            shutil.copyfile(checkpoint, run_dir / CHECKPOINTS[kind])
            model, _ = load_run_model(run_dir, which=which, device=device)
            bundle = load_dataset(run.train.dataset, root=run.train.data_root,
                                  imbalance_ratio=run.train.imbalance_ratio, test_only=True)
        resumed = read_flags(flags_path, sum(ev.n_per_class), len(ev.attacks))
        resumed.clean_pred[rows], resumed.adv_pred[rows], resumed.ran[rows] = -1, -1, False
        resumed.pert[rows], resumed.done[rows] = np.nan, False
        resumed.save(out / FLAGS_FILE)
        try:
            evaluate(model, bundle, cfg, out)
        except RfbenchError as exc:
            if "belongs to a different evaluation" in str(exc):
                raise RfbenchError(f"the entry's flags were not produced by this checkpoint with the track's "
                                   f"evaluation ({str(exc).split('(', 1)[-1].rstrip(')')})") from None
            raise
        rerun = read_flags(out / FLAGS_FILE, len(original.y), len(ev.attacks))
    claimed, seen = _outcomes(original, ev.attacks)[rows], _outcomes(rerun, ev.attacks)[rows]
    over = np.flatnonzero((claimed & ~seen).any(axis=1))
    under = int((~claimed & seen).any(axis=1).sum())
    return AuditReport(entry=entry.id, track=track.id, checkpoint=which, checkpoint_sha256=sha,
                       flags_sha256=file_sha256(flags_path), seed=seed, batches=batches, images=len(rows),
                       total=len(original.y), overclaimed=[int(original.index[rows[i]]) for i in over],
                       underclaimed=under,
                       audited_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


# -- audit records -------------------------------------------------------------------------------------------------
def record_path(track: Track, entry_id: str) -> Path:
    return track.path.parent / "audits" / f"{entry_id}.json"


def write_record(report: AuditReport, track: Track) -> Path:
    """``leaderboards/<track>/audits/<id>.json``: the audit's result, tied to the checkpoint and flags it audited."""
    from rfbench.core.io import atomic_write_json

    path = record_path(track, report.entry)
    data: dict[str, Any] = dataclasses.asdict(report)
    data["passed"] = report.passed
    atomic_write_json(path, data)
    return path


def passing_record(entry: Entry, track: Track, root: Path) -> str | None:
    """A one-line summary of the entry's passing audit record, or None (no record, failed, or for other files)."""
    import json

    from rfbench.core.io.atomic import read_text_bounded

    path = record_path(track, entry.id)
    if not path.is_file():
        return None
    try:
        data = json.loads(read_text_bounded(path))
        ev = entry.evaluation(track.info.protocol.checkpoint)
        flags = safe_repo_path(ev.flags_file or "", root, "flags_file")
        ok = (data.get("schema") == AUDIT_SCHEMA and data.get("passed") is True and data.get("entry") == entry.id
              and not data.get("overclaimed") and data.get("checkpoint_sha256") == ev.checkpoint_sha256
              and data.get("flags_sha256") == file_sha256(flags))
    except (ValueError, OSError, RfbenchError, KeyError, AttributeError, TypeError):
        return None
    if not ok:
        return None
    return f"audited {str(data.get('audited_at', ''))[:10]}: {int(data.get('images', 0))} test images re-run"
