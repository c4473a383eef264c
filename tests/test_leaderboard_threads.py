"""A CPU track fixes the intra-op thread count (``protocol.threads``): ``check`` holds every entry to it.

The count changes the order of float reductions, so entries trained or evaluated
with another count are not comparable bit for bit with the track's; the run result
records the counts per stage (trainer epochs, each evaluation), the entry keeps them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from rfbench.benchmark.leaderboard import load_track
from rfbench.benchmark.leaderboard.check import check_protocol
from rfbench.benchmark.leaderboard.schema import parse_entry
from rfbench.benchmark.runner.report import run_threads

REPO = Path(__file__).resolve().parents[1]
TRACK = REPO / "leaderboards" / "fashion-mnist-linf"


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads((TRACK / "pgd-at-s0.json").read_text())


def _problems(data: dict) -> list[str]:
    return [p for p in check_protocol(parse_entry(data, "entry"), load_track(TRACK / "track.yaml")) if "thread" in p]


def test_the_committed_entries_ran_with_the_tracks_count():
    track = load_track(TRACK / "track.yaml")
    assert track.info.protocol.threads == 1
    for path in sorted(TRACK.glob("*.json")):
        entry = parse_entry(json.loads(path.read_text()), path.name)
        assert entry.cost.threads_by_stage() == {"train": [1], "eval": [1]}, path.name
        assert not [p for p in check_protocol(entry, track) if "thread" in p], path.name


@pytest.mark.parametrize("cost, needle", [
    ({"cpu_threads": {"train": [2], "eval": [1]}}, "cost.cpu_threads.train is [2]"),
    ({"cpu_threads": {"train": [1], "eval": [1, 2]}}, "cost.cpu_threads.eval is [1, 2]"),
    ({"device": "cpu (x86_64, 2 threads)"}, "fixes 1 thread(s)"),
    ({"device": "cpu"}, "records no CPU thread count"),
])
def test_an_entry_with_another_thread_count_is_refused(committed, cost, needle):
    data = copy.deepcopy(committed)
    data["cost"].update(cost)
    problems = _problems(data)
    assert problems and any(needle in p for p in problems), problems


def test_an_entry_recording_the_tracks_count_passes(committed):
    data = copy.deepcopy(committed)
    data["cost"].update({"device": "cpu", "cpu_threads": {"train": [1], "eval": [1]}})
    assert _problems(data) == []


def test_the_run_result_gathers_the_counts_of_every_stage():
    blocks = {"best": {"cpu_threads": 1}, "last": {"cpu_threads": 2}}
    assert run_threads([{"cpu_threads": [1]}, None], blocks) == {"train": [1], "eval": [1, 2]}
    assert run_threads([{"cpu_threads": [2]}, {"cpu_threads": [1]}], {}) == {"train": [1, 2], "eval": []}
