"""The README's and SUBMITTING.md's code runs as printed, from a directory outside the repository.

A new user copies these blocks into their own directory, where only the installed ``rfbench``
package is importable (not the repository's top-level ``defenses/`` or ``benchmark/`` folders).
The test does the same: the subprocesses start in a temporary directory with ``PYTHONPATH`` set to
the package alone (``src/``, which holds only ``rfbench``).

* every ``python`` block of the README runs, in order, in one interpreter (later blocks use the
  names of earlier ones); the block that defines a ``Defense`` is saved as ``my_file.py`` instead,
  the file the README then names;
* the README's ``rfbench train --defense my_file.py:ClippedAT ...`` line runs (with a tiny budget
  appended), and the ``rfbench smoke`` and ``rfbench list`` lines of both files run as printed
  (SUBMITTING's ``path/to/my_defense.py:MyDefense`` placeholder replaced by that file);
* no block of either file imports the repository's folders by their bare names.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SUBMITTING = REPO / "leaderboards" / "SUBMITTING.md"
BARE = {"defenses", "benchmark", "attacks", "core", "models"}
TINY = ["--max-train-samples", "64", "--val-per-class", "2", "--steps", "1", "--val-steps", "1", "--batch-size", "32",
        "--epochs", "1", "--device", "cpu", "--quiet"]


def blocks(path: Path, lang: str) -> list[str]:
    """The fenced code blocks of ``lang`` in a Markdown file, in order (indented fences included)."""
    out: list[str] = []
    body: list[str] | None = None  # lines of the open block, None outside one
    keep, indent = False, ""
    for line in path.read_text().splitlines():
        fence = re.match(r"^(\s*)```(\w*)\s*$", line)
        if fence and body is None:
            body, keep, indent = [], fence.group(2) == lang, fence.group(1)
        elif fence and body is not None:
            if keep:
                out.append("\n".join(body) + "\n")
            body = None
        elif body is not None:
            body.append(line[len(indent):] if line.startswith(indent) else line)
    return out


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO / "src")
    e.setdefault("OMP_NUM_THREADS", "1")
    e["MPLBACKEND"] = "Agg"
    return e


def run(argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def rfbench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "rfbench", *args], cwd)


def top_level_imports(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", [README, SUBMITTING], ids=lambda p: p.name)
def test_no_block_imports_the_repository_folders(path):
    for code in blocks(path, "python"):
        assert not (top_level_imports(code) & BARE), f"{path.name} imports a repository folder by its bare name:\n{code}"
    for code in blocks(path, "bash"):
        assert not re.search(r"\b(from|import) (defenses|benchmark|attacks)\b", code), code
    text = path.read_text()
    assert "`defenses.base" not in text, f"{path.name} names defenses.base without the rfbench package"


def test_block_extraction_sees_the_readme_code():
    py = blocks(README, "python")
    assert any("class ClippedAT(Defense)" in b for b in py) and any("rfbench.evaluate(" in b for b in py)
    assert any("rfbench smoke --defense" in b for b in blocks(SUBMITTING, "bash"))


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    assert not (d / "defenses").exists()
    return d


@pytest.mark.slow
def test_readme_python_blocks_run_outside_the_repository(user_dir):
    code = []
    for block in blocks(README, "python"):
        if re.search(r"^class \w+\(Defense\)", block, re.M):
            (user_dir / "my_file.py").write_text(block)
        else:
            code.append(block)
    script = user_dir / "readme_blocks.py"
    script.write_text("\n".join(code))
    proc = run([sys.executable, str(script)], user_dir, timeout=600)
    assert "worst" in proc.stdout.lower()
    assert (user_dir / "runs" / "aa" / "result.json").is_file()
    # the defense file imports from outside the repository, exactly as printed
    run([sys.executable, "-c", "import my_file; print(my_file.ClippedAT.Config())"], user_dir)


@pytest.mark.slow
def test_readme_and_submitting_commands_run_outside_the_repository(user_dir):
    if not (user_dir / "my_file.py").exists():
        (user_dir / "my_file.py").write_text(next(b for b in blocks(README, "python") if "(Defense)" in b))
    train = re.search(r"`(rfbench train --defense my_file\.py:\w+[^`]*)`", README.read_text())
    assert train, "the README no longer says how to train the defense it defines"
    rfbench([*shlex.split(train.group(1))[1:], *TINY, "--out", "runs/mine"], user_dir)
    assert (user_dir / "runs" / "mine" / "checkpoint-best.pt").is_file()
    lines = [ln for path in (README, SUBMITTING) for b in blocks(path, "bash") for ln in b.splitlines()
             if ln.startswith(("rfbench smoke", "rfbench list"))]
    assert any(ln.startswith("rfbench smoke") for ln in lines)
    for line in lines:
        line = line.split("#")[0].replace("path/to/my_defense.py:MyDefense", "my_file.py:ClippedAT")
        rfbench(shlex.split(line)[1:] + (["--out", "runs/smoke"] if "smoke" in line else []), user_dir)
