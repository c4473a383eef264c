"""Leaderboard entries and track files are data: parsed with a schema, never executed; paths stay inside.

A submitted entry and a track file come from strangers' pull requests.  These
tests plant code where a careless implementation would run it (a defense
named as ``file.py:Class``, a ``defense.code`` file, a YAML tag that
constructs Python objects) and check that ``rfbench leaderboard check`` and
``build`` never execute it; that paths inside entries cannot leave the
repository; and, statically, that the leaderboard package has no ``eval``,
``exec``, import machinery or unsafe deserialisation at all.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from rfbench.benchmark.cli import main
from rfbench.benchmark.leaderboard import EntryError, check_entry, load_track
from rfbench.core.errors import RfbenchError

REPO = Path(__file__).resolve().parents[2]
TRACK = "fashion-mnist-linf"
ENTRIES = sorted((REPO / "leaderboards" / TRACK).glob("*.json"))
pytestmark = pytest.mark.skipif(not ENTRIES, reason=f"no entries in leaderboards/{TRACK} yet")


@pytest.fixture
def repo(tmp_path):
    """A copy of the repository's leaderboard (one track, its entries and flag files) and the defenses' sources."""
    shutil.copytree(REPO / "leaderboards" / TRACK, tmp_path / "leaderboards" / TRACK)
    shutil.copytree(REPO / "defenses", tmp_path / "defenses", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _entry(repo: Path) -> tuple[Path, dict]:
    path = sorted((repo / "leaderboards" / TRACK).glob("*.json"))[0]
    return path, json.loads(path.read_text())


def _problems(repo: Path, data: dict, path: Path) -> list[str]:
    with pytest.raises(EntryError) as exc:
        check_entry(data, where=path.name, root=repo, entry_path=path)
    assert "\n" not in str(exc.value)
    return exc.value.problems


def test_the_copied_entry_is_valid(repo):
    path, data = _entry(repo)
    check_entry(data, where=path.name, root=repo, entry_path=path)


@pytest.mark.parametrize("field", ["defense.code", "flags_file"])
@pytest.mark.parametrize("bad, fragment", [
    ("../../../etc/passwd", "escapes the repository ('..' is not allowed)"),
    ("leaderboards/../../outside.py", "escapes the repository"),
    ("/etc/passwd", "is an absolute path"),
    ("~/.ssh/id_rsa", "is an absolute path"),
    ("C:/Windows/win.ini", "is an absolute path"),
    ("defenses\\..\\..\\x.py", "must use '/' separators"),
    ("", "must be a non-empty relative path"),
], ids=["dotdot", "inner-dotdot", "absolute", "home", "drive", "backslash", "empty"])
def test_paths_inside_entries_cannot_leave_the_repository(repo, field, bad, fragment):
    path, data = _entry(repo)
    if field == "defense.code":
        data["defense"]["code"] = bad
    else:
        data["evaluations"]["best"]["flags_file"] = bad
    assert any(fragment in p for p in _problems(repo, data, path))


def test_a_symlink_out_of_the_repository_is_rejected(repo, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.py").write_text("x = 1\n")
    os.symlink(outside, repo / "defenses" / "escape")
    path, data = _entry(repo)
    data["defense"]["code"] = "defenses/escape/secret.py"
    assert any("resolves outside the repository" in p for p in _problems(repo, data, path))


EVIL = "open({marker!r}, 'w').write('code ran')\nclass Evil:\n    pass\n"


def test_check_and_build_never_run_code_named_by_an_entry(repo, capsys):
    marker = repo / "MARKER-entry-code-ran"
    (repo / "evil.py").write_text(EVIL.format(marker=str(marker)))
    path, data = _entry(repo)
    bad = copy.deepcopy(data)
    bad["defense"].update(name=f"{repo / 'evil.py'}:Evil", code="evil.py")
    bad["train_config"]["defense"] = bad["defense"]["name"]
    bad["id"] = "evil"
    evil_path = path.with_name("evil.json")
    evil_path.write_text(json.dumps(bad))
    main(["leaderboard", "check", "--root", str(repo), str(evil_path)])  # a plugin defense's name is just a string
    main(["leaderboard", "build", "--root", str(repo)])
    capsys.readouterr()
    assert not marker.exists()


def test_track_files_are_data(repo, capsys):
    marker = repo / "MARKER-track-code-ran"
    (repo / "evil.py").write_text(EVIL.format(marker=str(marker)))
    track = repo / "leaderboards" / TRACK / "track.yaml"
    text = track.read_text()
    track.write_text(text.replace("defense: pgd-at", f"defense: {repo / 'evil.py'}:Evil", 1))
    load_track(track)  # a defense named by a path is just a string here
    path, data = _entry(repo)
    main(["leaderboard", "check", "--root", str(repo), str(path)])
    main(["leaderboard", "build", "--root", str(repo)])
    capsys.readouterr()
    track.write_text(text + f"\nextra: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RfbenchError) as exc:
        load_track(track)
    assert "\n" not in str(exc.value)
    assert not marker.exists()


BUILTINS = {"eval", "exec", "compile", "__import__"}  # as bare names (re.compile is fine)
FORBIDDEN_CALLS = {"import_module", "exec_module", "spec_from_file_location", "import_target", "get_defense_class",
                   "build_defense", "run_path", "run_module"}


@pytest.mark.parametrize("module", sorted(p.name for p in (REPO / "benchmark" / "leaderboard").glob("*.py")))
def test_the_leaderboard_package_cannot_execute_data(module):
    """No eval/exec/import machinery, no pickle, no unsafe YAML or numpy loads in the code that reads entries."""
    source = (REPO / "benchmark" / "leaderboard" / module).read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            assert not (isinstance(fn, ast.Name) and name in BUILTINS), f"{module}:{node.lineno} calls {name}"
            if name in FORBIDDEN_CALLS:
                assert module == "submit.py" and name == "get_defense_class", (
                    f"{module}:{node.lineno} calls {name}")  # submit reads a run the user trained, never an entry
            if name in ("load", "loads") and isinstance(fn, ast.Attribute):
                owner = getattr(fn.value, "id", "")
                assert owner not in ("pickle", "marshal", "dill"), f"{module}:{node.lineno} unpickles"
                if owner == "yaml":
                    raise AssertionError(f"{module}:{node.lineno} uses yaml.{name}; use yaml.safe_load")
                if owner == "np":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert "allow_pickle" not in kw or getattr(kw["allow_pickle"], "value", True) is False, (
                        f"{module}:{node.lineno} np.load with allow_pickle")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
            assert not any(n in ("pickle", "marshal", "dill", "runpy") for n in names), f"{module} imports {names}"
