"""Every flag a message tells the user to pass exists on that command and appears in its ``--help``.

Two checks:

* statically, every ``--flag`` in the text of a raised error, a warning, a log line or a print of
  the package exists on a command whose code can reach that message (the command's module imports
  the message's module, directly or not) and is shown by that command's ``--help``;
* on real refusals, per command: a ``file.py:Class`` defense met in data (a run directory, a
  config, a track, a grid) or a ``--model file.py:factory`` is refused with flags that the very
  command that printed the refusal accepts and documents.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest
import yaml
from test_layers import imports, modules

from rfbench.benchmark.cli import build_parser, main, option_strings

REPO = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
MESSAGE_CALLS = {"warning", "error", "info", "warn", "print", "exception", "critical"}


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its words (``"eval"``, ``"leaderboard check"``)."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(words: str, parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[words] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(f"{words} {name}".strip(), child)

    walk("", build_parser())
    return out


def documented(parser: argparse.ArgumentParser, flag: str) -> bool:
    return flag in option_strings(parser) and re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", parser.format_help()) is not None


def message_flags(path: Path) -> list[tuple[int, str]]:
    """``(line, --flag)`` for each flag in a string of a ``raise``, warning, log or print call of ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in MESSAGE_CALLS:
            target = node
        else:
            continue
        for sub in ast.walk(target):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                found += [(node.lineno, m) for m in FLAG.findall(sub.value)]
    return found


def reach() -> dict[str, set[str]]:
    """For each module, the commands whose module imports it (directly or not), by command words."""
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    cmd_module = {words: f"rfbench.benchmark.cli.{words.split()[0]}_cmd" for words in commands()}
    out: dict[str, set[str]] = {}
    for words, start in cmd_module.items():
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m in seen or m not in graph:
                continue
            seen.add(m)
            todo += graph[m]
        for m in seen:
            out.setdefault(m, set()).add(words)
    return out


def test_every_flag_in_a_message_is_documented_on_a_command_that_reaches_it():
    known, cmds, reached = modules(), commands(), reach()
    bad = []
    for name, path in known.items():
        if name.startswith("rfbench.benchmark.cli") or name in reached:
            for line, flag in message_flags(path):
                users = reached.get(name, set()) or set(cmds)
                if not any(documented(cmds[w], flag) for w in users):
                    bad.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line} {flag} "
                               f"(reached by: {', '.join(sorted(users))})")
    assert not bad, "messages name flags that no command reaching them documents:\n" + "\n".join(bad)


def test_the_scan_finds_what_it_should():
    """The scanner sees a flag in an f-string of a raise and in a log call (it could fail)."""
    src = REPO / "rfbench" / "core" / "plugins.py"
    assert ("--allow-code" in {f for _, f in message_flags(src)})
    assert not documented(commands()["list"], "--allow-code")
    assert documented(commands()["eval"], "--allow-code") and documented(commands()["train"], "--allow-code")


# -- real refusals, per command ------------------------------------------------------------------------
TINY = ["--dataset", "fashion-mnist", "--model", "smallcnn", "--max-train-samples", "64", "--val-per-class", "2",
        "--steps", "1", "--val-steps", "1", "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", *TINY, "--out", str(out), "model_kwargs.width=0.25"]) == 0
    return out


def assert_flags_exist(words: str, err: str) -> None:
    line = err.strip().splitlines()[-1]
    assert line.startswith("rfbench: error:"), err
    parser = commands()[words]
    flags = FLAG.findall(line.split(": ", 2)[-1])
    assert flags, line
    for flag in flags:
        assert documented(parser, flag), f"`rfbench {words}` was told to use {flag}, which it lacks: {line}"


def test_refusals_name_flags_of_the_command_that_prints_them(tiny_run, tmp_path, capsys):
    import torch

    (tmp_path / "my_file.py").write_text("from rfbench.defenses import get_defense_class\nClippedAT = get_defense_class('pgd-at')\n")
    target = f"{tmp_path / 'my_file.py'}:ClippedAT"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint-best.pt", "checkpoint-last.pt"):
        state = torch.load(tiny_run / name, weights_only=True)
        state["config"]["defense"] = target
        torch.save(state, run / name)
    (run / "config.yaml").write_text((tiny_run / "config.yaml").read_text().replace("defense: pgd-at", f"defense: {target}"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"defense: {target}\nmodel_kwargs: {{width: 0.25}}\n")
    track = yaml.safe_load((REPO / "leaderboards" / "fashion-mnist-linf" / "track.yaml").read_text())
    track_path = tmp_path / "track.yaml"
    track_path.write_text(yaml.safe_dump({**track, "train": {**track["train"], "defense": target}}))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": str(track_path), "defenses": [target], "out": str(tmp_path / "s")}))
    (tmp_path / "nets.py").write_text("def build():\n    raise SystemExit('must not run')\n")
    cases = [
        ("eval", ["eval", "--run", str(run), "--n-per-class", "1", "--attack", "fgsm", "--device", "cpu", "--quiet",
                  "--out", str(tmp_path / "e")]),
        ("calibrate", ["calibrate", "--run", str(run), "--device", "cpu", "--out", str(tmp_path / "c")]),
        ("train", ["train", *TINY, "--config", str(cfg), "--out", str(tmp_path / "t")]),
        ("run", ["run", str(track_path), "--out", str(tmp_path / "r"), "--quiet"]),
        ("sweep", ["sweep", str(grid)]),
        ("eval", ["eval", "--model", f"{tmp_path / 'nets.py'}:build", "--dataset", "fashion-mnist", "--quiet",
                  "--out", str(tmp_path / "m")]),
    ]
    for words, argv in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert_flags_exist(words, capsys.readouterr().err)


def test_every_flag_has_help_text():
    """``--help`` explains every flag (not only its default)."""
    bare = []
    for words, parser in commands().items():
        for action in parser._actions:
            text = re.sub(r"\s*\[default:.*?\]\s*$", "", action.help or "").strip()
            if action.option_strings and action.help is not argparse.SUPPRESS and not text:
                bare.append(f"rfbench {words} {'/'.join(action.option_strings)}")
    assert not bare, "flags without help text: " + ", ".join(bare)
