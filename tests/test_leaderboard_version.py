"""Track protocol versions: an entry produced under another version of its track is refused, archived ones still parse."""

import json
from pathlib import Path

import pytest

from rfbench.benchmark.leaderboard.check import check_protocol, read_entry_file
from rfbench.benchmark.leaderboard.schema import load_track, parse_entry

REPO = Path(__file__).resolve().parents[1]
CPU_TRACKS = ["fashion-mnist-linf", "fashion-mnist-lt50-linf"]


@pytest.mark.parametrize("track_id", CPU_TRACKS)
def test_archived_v1_entries_parse_and_are_refused_by_the_v2_track(track_id):
    track = load_track(REPO / "leaderboards" / track_id / "track.yaml")
    assert track.info.version == 2
    archived = sorted((REPO / "leaderboards" / track_id / "archive" / "v1").glob("*.json"))
    assert archived, "the version-1 entries are archived, not deleted"
    entry = parse_entry(read_entry_file(archived[0]), archived[0].name)
    assert entry.track_version == 1  # absent in version-1 files
    problems = check_protocol(entry, track)
    assert any("track_version is 1" in p and "protocol version 2" in p for p in problems), problems
    for ev in entry.evaluations.values():  # the archive keeps its flag files readable
        assert ev.flags_file is None or (REPO / ev.flags_file).is_file()


def test_an_entry_of_the_current_version_passes_the_version_rule():
    track = load_track(REPO / "leaderboards" / CPU_TRACKS[0] / "track.yaml")
    path = sorted((REPO / "leaderboards" / CPU_TRACKS[0] / "archive" / "v1").glob("*.json"))[0]
    data = json.loads(path.read_text())
    data["track_version"] = track.info.version
    problems = check_protocol(parse_entry(data, path.name), track)
    assert not any("track_version" in p for p in problems)
    # the recipe moved to CNN3, so the version-1 SmallCNN entry still fails on the model, not silently passes
    assert any("model is 'smallcnn'" in p for p in problems), problems
