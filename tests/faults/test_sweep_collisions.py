"""A sweep whose cells would share a run directory is refused before any run, naming the two values."""

from __future__ import annotations

import pytest
from tiny_runs import write_tiny_track

from rfbench.benchmark.runner.sweep import GridConfig, expand_grid
from rfbench.core.errors import RfbenchError


def test_two_datasets_with_one_directory_name_are_refused(tmp_path):
    track = write_tiny_track(tmp_path)
    for d in ("a", "b"):
        (tmp_path / d / "x").mkdir(parents=True)
    grid = GridConfig(base=str(track), defenses=["pgd-at"], seeds=[0], out=str(tmp_path / "s"),
                      datasets=[f"imagefolder:{tmp_path / 'a' / 'x'}", f"imagefolder:{tmp_path / 'b' / 'x'}"])
    with pytest.raises(RfbenchError) as info:
        expand_grid(grid)
    text = str(info.value)
    assert "datasets" in text and "a/x" in text and "b/x" in text and "same run directory" in text


def test_distinct_names_still_expand(tmp_path):
    track = write_tiny_track(tmp_path)
    grid = GridConfig(base=str(track), defenses=["pgd-at"], seeds=[0], out=str(tmp_path / "s"),
                      datasets=["fashion-mnist", "fashion-mnist-lt"])
    assert len(expand_grid(grid)) == 2
