"""Code runs only when the user names it on the command line (docs/reliability.md, "Security model").

A ``file.py:Class`` defense met inside a checkpoint, a run directory, a run
config or a track file is refused (and a leaderboard entry's names are never imported) with one line naming ``--allow-code``, and the planted
file's marker never appears; ``--allow-code`` on the command line allows it.
"""

from __future__ import annotations

import pytest
import torch
from faultkit import assert_one_line_error

from rfbench.benchmark.cli import main
from rfbench.core.plugins import code_allowed

TINY = ["--dataset", "fashion-mnist", "--model", "smallcnn", "--max-train-samples", "64", "--val-per-class", "2",
        "--steps", "1", "--val-steps", "1", "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--quiet"]
EVAL = ["--n-per-class", "2", "--attack", "fgsm", "--device", "cpu", "--quiet"]


def plant(tmp_path):
    """A defense file that leaves a marker when imported (it re-exports PGD-AT, so it works when allowed)."""
    marker = tmp_path / "MARKER-code-ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                    "from rfbench.defenses import get_defense_class\n"
                    "Evil = get_defense_class('pgd-at')\n")
    return marker, f"{evil}:Evil"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", *TINY, "--out", str(out), "model_kwargs.width=0.25"]) == 0
    return out


def test_checkpoint_naming_a_file_defense_is_refused(tiny_run, tmp_path, capsys):
    marker, target = plant(tmp_path)
    run = tmp_path / "shared-run"
    run.mkdir()
    for name in ("checkpoint-best.pt", "checkpoint-last.pt", "config.yaml"):
        state = torch.load(tiny_run / name, weights_only=True) if name.endswith(".pt") else None
        if state is None:
            (run / name).write_text((tiny_run / name).read_text().replace("defense: pgd-at", f"defense: {target}"))
        else:
            state["config"]["defense"] = target
            torch.save(state, run / name)
    args = ["eval", "--run", str(run), *EVAL, "--out", str(tmp_path / "e")]
    assert main(args) == 2
    assert_one_line_error(capsys.readouterr().err, target, "--allow-code")
    assert not marker.exists()
    assert main(["calibrate", "--run", str(run), "--device", "cpu", "--out", str(tmp_path / "c")]) == 2
    assert "--allow-code" in capsys.readouterr().err and not marker.exists()
    assert main(args + ["--allow-code"]) == 0  # named explicitly: allowed
    assert marker.exists() and (tmp_path / "e" / "result.json").is_file()
    main(["list", "defenses"])
    assert not code_allowed(target)


def test_run_config_naming_a_file_defense_is_refused(tmp_path, capsys):
    marker, target = plant(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"defense: {target}\nmodel_kwargs: {{width: 0.25}}\n")
    assert main(["train", *TINY, "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, "--allow-code")
    assert not marker.exists()
    override = ["train", *TINY, "--out", str(tmp_path / "r2"), "model_kwargs.width=0.25", f"defense={target}"]
    assert main(override) == 0  # typed on the command line: that names it
    assert marker.exists()


def test_track_file_naming_a_file_defense_or_model_is_refused(tmp_path, capsys):
    """A third-party track.yaml is data: a `file.py:Class` defense or `file.py:factory` model in it never runs."""
    from pathlib import Path

    import yaml

    marker, target = plant(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    track = yaml.safe_load((repo / "leaderboards" / "fashion-mnist-linf" / "track.yaml").read_text())
    for key, value in (("defense", target), ("model", target.replace(":Evil", ":factory"))):
        doc = {**track, "train": {**track["train"], key: value}}
        path = tmp_path / f"track-{key}.yaml"
        path.write_text(yaml.safe_dump(doc))
        assert main(["run", str(path), "--out", str(tmp_path / f"r-{key}"), "--quiet"]) == 2
        # a defense names --allow-code; training takes registered models only, so a model file is unknown
        assert_one_line_error(capsys.readouterr().err, "--allow-code" if key == "defense" else "unknown model")
        assert not marker.exists()
        assert not (tmp_path / f"r-{key}" / "train").exists()  # refused before any work


def test_entry_naming_a_file_defense_is_never_imported(tmp_path, capsys):
    """`leaderboard check --check-code` and `build` read the names in an entry; they import nothing."""
    import json
    import shutil
    from pathlib import Path

    marker, target = plant(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "leaderboards", tmp_path / "leaderboards", ignore=shutil.ignore_patterns("archive", "*.lock"))
    entry_path = tmp_path / "leaderboards" / "fashion-mnist-linf" / "pgd-at-s0.json"
    entry = json.loads(entry_path.read_text())
    entry["defense"]["name"] = target
    entry["defense"]["code"] = str(tmp_path / "evil.py")
    entry_path.write_text(json.dumps(entry))
    main(["leaderboard", "check", "--check-code", "--root", str(tmp_path), str(entry_path)])
    main(["leaderboard", "build", "--root", str(tmp_path)])
    assert not marker.exists()
    capsys.readouterr()
