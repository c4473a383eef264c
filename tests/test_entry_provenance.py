"""An entry records what it takes to rerun it: a portable command, the resolved defense config, the
sha256 of a plugin's code file and the paper the registry cites."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tiny_runs import write_tiny_track

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval.provenance import defense_provenance, portable_command, registry_paper
from rfbench.benchmark.leaderboard import load_track
from rfbench.benchmark.leaderboard.submit import defense_code_path, submit
from rfbench.benchmark.runner import execute_run, load_run_config, resolve_run
from rfbench.core.plugins import allow_code, reset_allowed_code

CLIPPED = '''from dataclasses import dataclass
import torch.nn.functional as F
from rfbench.defenses.base import Defense, LossOutput

class ClippedAT(Defense):
    """PGD-AT with the adversarial cross-entropy clipped at max_loss."""

    @dataclass
    class Config:
        max_loss: float = 5.0

    def loss(self, model, x, y, x_adv):
        logits = model(x_adv)
        ce = F.cross_entropy(logits, y, reduction="none").clamp(max=self.cfg.max_loss)
        return LossOutput(ce.mean(), logits)
'''


def test_portable_command_keeps_no_machine_path(tmp_path):
    root = tmp_path / "repo"
    cmd = portable_command(["/opt/venv/bin/rfbench", "run", str(root / "leaderboards/t/track.yaml"), "--defense",
                            "/home/me/code/my_file.py:ClippedAT", "--out=/scratch/me/runs/t/x-s0", "defense_args.m=/abs/f",
                            "--seed", "0"], [root])
    assert cmd == ("rfbench run leaderboards/t/track.yaml --defense <path>/my_file.py:ClippedAT "
                   "--out=<path>/x-s0 defense_args.m=<path>/f --seed 0")
    # what the committed entries hold today
    old = ("/work/snap2/rfbench/__main__.py run leaderboards/fashion-mnist-linf/track.yaml --defense pgd-at --seed 0 "
           "--out /work/q/runs/fashion-mnist-linf/pgd-at-s0 --quiet")
    assert portable_command(old, [root]) == ("rfbench run leaderboards/fashion-mnist-linf/track.yaml --defense pgd-at "
                                             "--seed 0 --out <path>/pgd-at-s0 --quiet")
    assert portable_command(["python", "-m", "rfbench", "eval", "--run", "runs/x"], [root]) == "rfbench eval --run runs/x"
    assert portable_command(portable_command(old, [root]), [root]) == portable_command(old, [root])


def test_registry_paper():
    assert registry_paper("dafa") == "Lee et al., ICLR 2024"
    assert registry_paper("pgd-at") == "Madry et al., ICLR 2018"
    assert registry_paper("class-weights") == ""  # rfbench's own invention cites no paper
    assert registry_paper("my_file.py:ClippedAT") == ""


def test_defense_provenance_of_a_plugin_file(tmp_path):
    f = tmp_path / "my_file.py"
    f.write_text(CLIPPED)
    target = f"{f}:ClippedAT"
    allow_code([target])
    try:
        rec = defense_provenance(target, {"max_loss": 3})
        assert rec["config"] == {"max_loss": 3.0}
        assert defense_provenance(target, {})["config"] == {"max_loss": 5.0}
    finally:
        reset_allowed_code()
    assert rec["code_sha256"] == hashlib.sha256(CLIPPED.encode()).hexdigest() and rec["code_file"] == "my_file.py"
    assert defense_provenance("dafa", {"beta": 3})["config"]["beta"] == 3.0
    assert "code_sha256" not in defense_provenance("dafa", {})  # a built-in: its code is the repository's


def test_submitted_plugin_entry_records_config_hash_and_a_portable_command(tmp_path, capsys):
    root = tmp_path / "repo"
    track_path = write_tiny_track(root, checkpoints=("best",))
    code = root / "plugins" / "my_file.py"
    code.parent.mkdir()
    code.write_text(CLIPPED)
    target = f"{code}:ClippedAT"
    allow_code([target])  # as naming it with --defense does
    try:
        run = resolve_run(load_run_config(track_path), defense=target, out=root / "runs" / "clipped-s0", quiet=True,
                          overrides=["train.defense_args.max_loss=4"])
        run_dir = execute_run(run, quiet=True)
    finally:
        reset_allowed_code()
    assert defense_code_path(target, root) == "plugins/my_file.py"  # found by its path, not imported
    argv = ["leaderboard", "submit", str(run_dir), "--track", "fashion-mnist-linf", "--id", "clipped-s0", "--root", str(root)]
    assert main(argv) == 0  # entries are data: submitting checks the evidence and never imports the plugin
    entry = json.loads((root / "leaderboards" / "fashion-mnist-linf" / "clipped-s0.json").read_text())
    prov = entry["provenance"]
    assert prov["defense"]["config"] == {"max_loss": 4.0}
    assert prov["defense"]["code_sha256"] == hashlib.sha256(code.read_bytes()).hexdigest()
    assert prov["command"].startswith("rfbench ")
    text = json.dumps({k: prov[k] for k in ("command", "defense")})
    assert str(tmp_path) not in text and str(Path.home()) + "/" not in text


def test_submitted_entry_takes_the_paper_from_the_registry(tmp_path):
    root = tmp_path / "repo"
    track_path = write_tiny_track(root, checkpoints=("best",))
    run = resolve_run(load_run_config(track_path), defense="dafa", out=root / "runs" / "dafa-s0", quiet=True)
    run_dir = execute_run(run, quiet=True)
    entry = json.loads(submit(run_dir, load_track(track_path), root, code="https://example.org/dafa.py").read_text())
    assert entry["defense"]["paper"] == "Lee et al., ICLR 2024"
    assert entry["provenance"]["defense"]["config"]["beta"] == 6.0
    threads = int(os.environ["RFBENCH_THREADS"])  # conftest's count, applied to the training and the evaluation
    assert entry["cost"]["cpu_threads"] == {"train": [threads], "eval": [threads]}


def test_committed_entries_record_portable_commands():
    repo = Path(__file__).resolve().parents[1]
    entries = sorted((repo / "leaderboards").glob("*/*.json"))
    assert entries
    for path in entries:
        command = json.loads(path.read_text())["provenance"]["command"]
        assert command.startswith("rfbench ") and " /" not in command and "=/" not in command, (path.name, command)


def test_committed_entries_cite_the_registry_paper():
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "leaderboards").glob("*/*.json")):
        defense = json.loads(path.read_text())["defense"]
        if registry_paper(defense["name"]):
            assert defense["paper"] == registry_paper(defense["name"]), path.name
