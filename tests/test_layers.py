"""The package's layers, enforced: every import (function-local ones included) points down or sideways.

Layers, lowest first (docs/ARCHITECTURE.md, "Layers"):

    core  <  attacks  <  models  <  defenses  <  data  <  train, eval  <  leaderboard, runner  <  cli  <  api

``core`` is ``rfbench.core`` (config, errors, registries, plugins, per-class statistics, the threat
model, io); ``api`` is the ``rfbench`` package's own modules (``rfbench/__init__.py``,
``rfbench.datasets``, ``rfbench.leaderboards``).  A module may import its own layer and the layers
below it, never a layer above.  Between files there is no import cycle at all, however the
imports are placed (module level, inside a function, under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rfbench"

#: layer index of each module prefix; the longest matching prefix wins
LAYERS = {
    "rfbench.core": 0,
    "rfbench.attacks": 1,
    "rfbench.models": 2,
    "rfbench.defenses": 3,
    "rfbench.benchmark.data": 4,
    "rfbench.benchmark.train": 5,
    "rfbench.benchmark.eval": 5,
    "rfbench.benchmark.leaderboard": 6,
    "rfbench.benchmark.runner": 6,
    "rfbench.benchmark.cli": 7,
    "rfbench": 8,
}
NAMES = ["core", "attacks", "models", "defenses", "data", "train/eval", "leaderboard/runner", "cli", "api"]


def modules() -> dict[str, Path]:
    """Every module of the installed tree, by dotted name (the symbolic links inside ``rfbench/`` followed)."""
    out = {}
    paths = [Path(d) / f for d, _, files in os.walk(PKG, followlinks=True) for f in files if f.endswith(".py")]
    for path in sorted(paths):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["rfbench", *parts])] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The rfbench modules ``name`` imports anywhere in its file (relative imports resolved)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                found.add(target)
    return found


def layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    for name in modules():
        assert any(name == p or name.startswith(p + ".") for p in LAYERS if p != "rfbench") or \
            name in ("rfbench", "rfbench.datasets", "rfbench.leaderboards", "rfbench.__main__", "rfbench.benchmark"), name


def test_no_import_points_up_a_layer():
    upward = sorted(f"{src} ({NAMES[layer(src)]}) imports {dst} ({NAMES[layer(dst)]})"
                    for src, dsts in graph().items() for dst in dsts if layer(dst) > layer(src))
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_files():
    edges = graph()
    # Tarjan's strongly connected components: any component of two or more files is a cycle
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not comps, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in comps)


@pytest.mark.parametrize("bad", ["upward", "cycle"])
def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path, bad):
    """The checks above can fail: a planted function-local upward import and a two-file cycle are found."""
    known = {"rfbench.core.a": tmp_path / "a.py", "rfbench.core.b": tmp_path / "b.py",
             "rfbench.benchmark.cli.x": tmp_path / "x.py"}
    (tmp_path / "a.py").write_text("def f():\n    from rfbench.benchmark.cli.x import main\n" if bad == "upward"
                                   else "from rfbench.core import b\n")
    (tmp_path / "b.py").write_text("def g():\n    import rfbench.core.a\n")
    (tmp_path / "x.py").write_text("")
    got = imports("rfbench.core.a", known["rfbench.core.a"], known)
    if bad == "upward":
        assert got == {"rfbench.benchmark.cli.x"} and layer("rfbench.benchmark.cli.x") > layer("rfbench.core.a")
    else:
        assert got == {"rfbench.core.b"}
        assert imports("rfbench.core.b", known["rfbench.core.b"], known) == {"rfbench.core.a"}
