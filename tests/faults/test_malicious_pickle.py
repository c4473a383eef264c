"""Malicious checkpoints are refused and their code never runs; safetensors weights load.

The payload is a real exploit: an object whose ``__reduce__`` makes the
unpickler call ``exec`` on code that creates a marker file.  The first test
proves it is live (a plain ``torch.load(weights_only=False)`` does create the
marker); every other test feeds it to an rfbench entry point and checks that
the load is refused with one line and that the marker does not appear.
"""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import pytest
import torch
from faultkit import assert_one_line_error, rfbench, train_cmd

from rfbench.benchmark.cli import main
from rfbench.core.errors import CheckpointError
from rfbench.core.io import load_checkpoint, save_checkpoint
from rfbench.models import create_model


class Exploit:
    """Unpickling this runs ``code`` (here: create the marker file)."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('code ran')"

    def __reduce__(self):
        return builtins.exec, (self.code,)


def _weights():
    return create_model("smallcnn", 10, 1, [0.2860], [0.3530], width=0.25).state_dict()


@pytest.fixture
def evil(tmp_path):
    """``evil(kind) -> path`` of a malicious checkpoint, and the marker its code would create."""
    marker = tmp_path / "MARKER-code-ran"

    def make(kind: str = "zip") -> Path:
        state = _weights()
        path = tmp_path / f"evil-{kind}.pt"
        if kind == "zip":  # the exploit beside real weights
            torch.save({"model": state, "epoch": 1, "note": Exploit(marker)}, path)
        elif kind == "nested":  # hidden inside the state dict itself
            state["head.weight"] = Exploit(marker)
            torch.save({"model": state}, path)
        elif kind == "legacy":  # torch's pre-1.6 format
            torch.save({"model": state, "x": Exploit(marker)}, path, _use_new_zipfile_serialization=False)
        elif kind == "raw-pickle":  # not torch at all
            path.write_bytes(pickle.dumps({"model": state, "x": Exploit(marker)}))
        elif kind == "as-safetensors":  # a pickle renamed to look like safetensors
            path = path.with_suffix(".safetensors")
            torch.save({"model": state, "x": Exploit(marker)}, path)
        return path

    make.marker = marker
    return make


def test_the_payload_is_live(evil):
    """Without weights_only the exploit runs: the refusals below are what stops it."""
    path = evil("zip")
    torch.load(path, weights_only=False)
    assert evil.marker.read_text() == "code ran"


@pytest.mark.parametrize("kind", ["zip", "nested", "legacy", "raw-pickle", "as-safetensors"])
def test_load_checkpoint_refuses_and_the_code_does_not_run(evil, kind):
    path = evil(kind)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    if kind in ("zip", "nested", "legacy"):
        assert msg.startswith(f"refusing to load {path}: it asks to unpickle exec"), msg
        assert "weights_only=False" not in msg  # never advise the unsafe load
    else:
        assert msg.startswith(f"corrupt file {path}"), msg
    assert not evil.marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["eval --weights", "train --init"])
def test_cli_refuses_a_malicious_checkpoint_in_a_real_process(evil, tmp_path, entry):
    path = evil("zip")
    if entry == "eval --weights":
        args = ["eval", "--model", "smallcnn", "--model-arg", "width=0.25", "--weights", str(path), "--dataset",
                "fashion-mnist", "--n-per-class", "2", "--attack", "fgsm", "--device", "cpu", "--out", str(tmp_path / "e")]
    else:
        args = train_cmd(tmp_path / "run", "--init", str(path), "--epochs", "1")
    proc = rfbench(args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, f"refusing to load {path}")
    assert not evil.marker.exists()


def test_a_malicious_checkpoint_in_a_run_directory_is_refused(evil, tmp_path, capsys):
    """``eval --run DIR`` and resuming ``train --out DIR`` load checkpoints a stranger may have planted."""
    run = tmp_path / "run"
    run.mkdir()
    evil("zip").rename(run / "checkpoint-best.pt")
    evil("nested").rename(run / "checkpoint-last.pt")
    assert main(["eval", "--run", str(run), "--device", "cpu", "--out", str(tmp_path / "e")]) == 2
    assert_one_line_error(capsys.readouterr().err, f"refusing to load {run / 'checkpoint-best.pt'}")
    assert main(train_cmd(run, "--epochs", "1")) == 2
    assert_one_line_error(capsys.readouterr().err, f"refusing to load {run / 'checkpoint-last.pt'}")
    assert not evil.marker.exists()


def test_safetensors_weights_load_and_evaluate(tmp_path, capsys):
    state = _weights()
    path = tmp_path / "weights.safetensors"
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    code = main(["eval", "--model", "smallcnn", "--model-arg", "width=0.25", "--weights", str(path), "--dataset",
                 "fashion-mnist", "--n-per-class", "2", "--attack", "fgsm", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / "e")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "e" / "result.json").is_file()


def test_user_code_runs_only_when_explicitly_allowed(tmp_path, capsys):
    """``--model file.py:factory`` executes that file, so it needs --allow-code; without it nothing runs."""
    marker = tmp_path / "MARKER-module-ran"
    user = tmp_path / "my_model.py"
    user.write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                    "from rfbench.models import create_model\n"
                    "def build(num_classes, in_channels, mean, std):\n"
                    "    return create_model('smallcnn', num_classes, in_channels, mean, std, width=0.25)\n")
    args = ["eval", "--model", f"{user}:build", "--dataset", "fashion-mnist", "--n-per-class", "2", "--attack", "fgsm",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "e")]
    assert main(args) == 2
    assert_one_line_error(capsys.readouterr().err, "--allow-code")
    assert not marker.exists()
    assert main(args + ["--allow-code"]) == 0
    assert marker.exists()


def test_help_says_which_options_execute_code(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "EXECUTES that file" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "a file is executed" in " ".join(capsys.readouterr().out.split())
