"""The parts of an entry that every kind of track builds alike: its evaluation records and flag-file names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rfbench.benchmark.leaderboard.schema import SUMMARY_FIELDS, Track
from rfbench.core.io.digest import file_sha256


def flags_name(track: Track, entry_id: str, which: str, flags: Path) -> str:
    """The repository path an entry's flag file is copied to: named by the entry, checkpoint and content."""
    return f"leaderboards/{track.id}/flags/{entry_id}-{which}-{file_sha256(flags)[:12]}.npz"


def evaluation_record(block: dict[str, Any], flags_rel: str, checkpoint_sha256: str | None) -> dict[str, Any]:
    """An entry's ``evaluations.<checkpoint>`` from a run result's (or an evaluation's) checkpoint block."""
    names = ["clean", *block["attacks"], "worst_case"]
    return {
        "epoch": block.get("epoch"),
        "selected_by": block.get("selected_by") or "",
        "attacks": list(block["attacks"]),
        "worst_case_over": list(block["worst_case_over"]),
        "n_per_class": list(block["n_per_class"]),
        "per_class": {n: block["per_class"][n] for n in names},
        "summary": {n: {k: block["summary"][n][k] for k in (*SUMMARY_FIELDS, "worst_ci95") if k in block["summary"][n]}
                    for n in names},
        "checks": block["checks"],
        "flags_file": flags_rel,
        "checkpoint_sha256": checkpoint_sha256,
    }
