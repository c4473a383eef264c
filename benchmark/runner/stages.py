"""Stage markers of a run directory (``stages.json``): which stages finished, when, and how long they took.

A stage is marked only after its outputs are written, so a killed run redoes
at most the stage it was in (and that stage resumes itself: the trainer from
``checkpoint-last.pt``, the evaluation from its per-batch flag file).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from rfbench.core.io import atomic_write_json, read_json

STAGES_FILE = "stages.json"


class StageLog:
    """Read/write view of ``RUN/stages.json``."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / STAGES_FILE
        self.stages: dict[str, dict[str, Any]] = read_json(self.path) if self.path.exists() else {}

    def done(self, stage: str) -> bool:
        return self.stages.get(stage, {}).get("status") == "done"

    def mark(self, stage: str, seconds: float, **info: Any) -> None:
        """Record ``stage`` as finished (atomically)."""
        self.stages[stage] = {"status": "done", "seconds": round(seconds, 2),
                              "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              **info}
        atomic_write_json(self.path, self.stages)

    def reset(self) -> None:
        """Forget every stage (``--force``)."""
        self.stages = {}
        atomic_write_json(self.path, self.stages)
