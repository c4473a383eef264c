"""A leaderboard fork in which the CPU tracks are back at protocol version 1 with their archived entries.

Tests of ranking and pages need committed entries with known properties (identical twins, hostile names);
the version-1 entries in ``leaderboards/<track>/archive/v1/`` are such a set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def restore_v1(root: Path) -> None:
    """In the fork at ``root``, put each archived version-1 track file, entry and flag file back in place.

    The current protocol's entries are removed first: a page holds one protocol.
    """
    for archive in sorted((root / "leaderboards").glob("*/archive/v1")):
        track_dir = archive.parents[1]
        for current in track_dir.glob("*.json"):
            current.unlink()
        shutil.rmtree(track_dir / "flags", ignore_errors=True)
        shutil.copy(archive / "track.yaml", track_dir / "track.yaml")
        (track_dir / "flags").mkdir(exist_ok=True)
        for npz in (archive / "flags").glob("*.npz"):
            shutil.copy(npz, track_dir / "flags" / npz.name)
        rel = f"leaderboards/{track_dir.name}/"
        for path in archive.glob("*.json"):
            data = json.loads(path.read_text())
            for ev in data["evaluations"].values():
                if ev.get("flags_file"):
                    ev["flags_file"] = ev["flags_file"].replace(rel + "archive/v1/flags/", rel + "flags/")
            (track_dir / path.name).write_text(json.dumps(data, indent=2) + "\n")
        shutil.rmtree(track_dir / "archive")
