"""Hostile files are one ``REJECT``/one-line error each, bounded and never blocking (docs/reliability.md)."""

from __future__ import annotations

import os

import pytest

from rfbench.benchmark.cli import main
from rfbench.benchmark.leaderboard.check import EntryError, check_flags, read_entry_file
from rfbench.core.errors import RfbenchError
from rfbench.core.io import read_json

DEEP = "[" * 100_000 + "]" * 100_000


def test_read_json_refuses_deep_nesting_devices_fifos_and_directories(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opening it for reading would block forever
    for path, want in ((deep, "nested too deeply"), ("/dev/zero", "not a regular file"), (fifo, "not a regular file"),
                       (tmp_path, "a directory")):
        with pytest.raises(RfbenchError, match=want):
            read_json(path)


def test_report_on_hostile_files_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    for arg in (str(deep), "/dev/zero", str(tmp_path)):
        assert main(["report", arg]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("rfbench: error:") == 1, err


def test_bad_entries_are_rejected_one_by_one(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    with pytest.raises(EntryError, match="nested too deeply"):
        read_entry_file(deep)
    fifo = tmp_path / "flags.npz"
    os.mkfifo(fifo)
    assert "not a regular file" in check_flags("best", None, fifo)[0]
    trunc = tmp_path / "trunc.npz"
    import numpy as np

    np.savez(tmp_path / "ok.npz", index=np.arange(3))
    trunc.write_bytes((tmp_path / "ok.npz").read_bytes()[:40])
    assert "corrupt flag file" in check_flags("best", None, trunc)[0]
    other = tmp_path / "other.json"
    other.write_text("{")
    assert main(["leaderboard", "check", str(deep), str(other)]) == 1  # both reported, neither stops the other
    out = capsys.readouterr().out
    assert f"REJECT  {deep}" in out and f"REJECT  {other}" in out


def test_build_rejects_bad_entries_and_builds_the_rest(tmp_path, monkeypatch):
    """`leaderboard build` in a fork with a 100k-deep entry and a truncated one: both rejected, every page built."""
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "leaderboards", tmp_path / "leaderboards",
                    ignore=shutil.ignore_patterns("._writer.rfbench.lock", "archive"))
    track = tmp_path / "leaderboards" / "fashion-mnist-linf"
    (track / "deep-s0.json").write_text(DEEP)
    (track / "trunc-s0.json").write_text('{"a": ')
    (track / "README.md").unlink()
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "build"]) == 0
    page = (track / "README.md").read_text()
    ranked, rejected = page.split("Rejected entries")
    assert "`deep-s0.json`: not valid JSON: nested too deeply" in rejected
    assert "`trunc-s0.json`: not valid JSON" in rejected
    assert "pgd-at" in ranked and "deep-s0" not in ranked and "trunc-s0" not in ranked
    assert (tmp_path / "leaderboards" / "README.md").exists()
