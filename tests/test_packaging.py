"""The package is plain: tools follow it, every public module imports, and a wheel and an sdist install and run.

``rfbench/benchmark``, ``rfbench/attacks`` and ``rfbench/defenses`` are relative symbolic links to the
repository's top-level folders, and ``src/rfbench`` links to ``rfbench/`` (docs/ARCHITECTURE.md, "Packaging").
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import rfbench

ROOT = Path(__file__).resolve().parents[1]
ROOTS = ("benchmark", "attacks", "defenses")  # the top-level code folders, linked inside rfbench/


@pytest.mark.parametrize("name", sorted(rfbench._LAZY_MODULES))
def test_every_public_module_imports_as_a_module(name):
    """``import rfbench.datasets`` works like ``rfbench.datasets`` (attribute) for every exposed module."""
    module = importlib.import_module(f"rfbench.{name}")
    assert getattr(rfbench, name) is module


def test_no_custom_import_hook_is_installed():
    """No meta-path finder of rfbench's or of an editable install maps the package: it is found on sys.path."""
    hooks = [f for f in sys.meta_path if "rfbench" in type(f).__module__ or "__editable__" in type(f).__module__]
    assert not hooks, hooks
    spec = importlib.util.find_spec("rfbench")
    assert spec is not None and spec.loader is not None and type(spec.loader).__name__ == "SourceFileLoader"


def test_go_to_definition_lands_in_the_top_level_folder(tmp_path):
    """jedi (the engine behind many IDEs) resolves ``rfbench.attacks.core.pgd`` to ``attacks/core.py``."""
    jedi = pytest.importorskip("jedi")
    code = "import rfbench.attacks.core\nrfbench.attacks.core.pgd\n"
    script = jedi.Script(code, path=tmp_path / "user.py", project=jedi.Project(tmp_path))
    found = script.goto(2, len("rfbench.attacks.core.p"), follow_imports=True)
    assert found, "jedi found no definition"
    assert Path(found[0].module_path).resolve() == ROOT / "attacks" / "core.py"
    assert found[0].name == "pgd" and found[0].type == "function"


SMOKE = ("import json, rfbench, rfbench.datasets, rfbench.leaderboards, rfbench.core.io, torch; "
         "from rfbench.attacks.core import pgd; from rfbench.defenses.base import Defense; "
         "from importlib.resources import files; "
         "m = rfbench.create_model('cnn3', num_classes=10, in_channels=1); "
         "x = torch.rand(4, 1, 28, 28); y = torch.tensor([0, 1, 2, 3]); "
         "xa = pgd(m.eval(), x, y, eps=0.1, alpha=0.02, steps=2); "
         "web = files('rfbench.benchmark.leaderboard') / 'web'; "
         "print(json.dumps({'file': rfbench.__file__, 'linf': float((xa - x).abs().max()), "
         "'web': sorted(p.name for p in web.iterdir())}))")


def _install_and_smoke(wheel: Path, target: Path) -> dict:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", SMOKE], cwd=target.parent, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cli = subprocess.run([sys.executable, "-m", "rfbench", "list", "defenses"], cwd=target.parent, env=env,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "trades" in cli.stdout, cli.stderr[-2000:]
    return out


def _wheel_from(source: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = out.glob("rfbench-*.whl")
    return wheel


@pytest.mark.slow
def test_a_wheel_and_an_sdist_install_and_run(tmp_path):
    """Both artefacts carry real files (no links), every subpackage and the web assets, and run outside the checkout."""
    source = tmp_path / "checkout"  # a copy, so that the build leaves nothing in the working tree
    source.mkdir()
    for part in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "src", "rfbench", *ROOTS):
        src = ROOT / part
        (shutil.copytree(src, source / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
         if src.is_dir() and not src.is_symlink() else shutil.copy2(src, source / part, follow_symlinks=False))
    wheel = _wheel_from(source, tmp_path / "wheel")
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("rfbench/attacks/core.py", "rfbench/defenses/base.py", "rfbench/benchmark/cli/__init__.py",
                     "rfbench/core/config.py", "rfbench/models/base.py", "rfbench/benchmark/leaderboard/web/style.css",
                     "rfbench/benchmark/leaderboard/web/table.html.j2"):
        assert required in names, required
    got = _install_and_smoke(wheel, tmp_path / "site-wheel")
    assert Path(got["file"]).resolve().is_relative_to(tmp_path / "site-wheel")
    assert 0 < got["linf"] <= 0.1 + 1e-6 and "style.css" in got["web"]

    sdist_dir = tmp_path / "sdist"
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(sdist_dir)!r})"],
                   cwd=source, check=True, capture_output=True, timeout=600)
    (sdist,) = sdist_dir.glob("rfbench-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
        assert not [m.name for m in members if m.issym() or m.islnk()], "the sdist must hold files, not links"
        tar.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    got = _install_and_smoke(_wheel_from(unpacked, tmp_path / "wheel2"), tmp_path / "site-sdist")
    assert Path(got["file"]).resolve().is_relative_to(tmp_path / "site-sdist") and "style.css" in got["web"]
    assert "table.html.j2" in got["web"]
