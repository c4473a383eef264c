"""Packaging: one plain package, ``rfbench``, with every subpackage inside ``rfbench/``.

The repository's top-level folders ``benchmark/``, ``attacks/`` and ``defenses/`` hold the code;
``rfbench/benchmark``, ``rfbench/attacks`` and ``rfbench/defenses`` are relative symbolic links to
them, so the import names are ``rfbench.*`` without any import hook.  ``src/rfbench`` links to
``rfbench/``: with this src layout an editable install is one static ``.pth`` line (``<checkout>/src``),
which type checkers and IDEs read, and which exposes no other top-level name.  A checkout on
``PYTHONPATH``, editable installs, wheels and sdists all see the same plain tree (docs/ARCHITECTURE.md,
"Packaging").  Metadata and dependencies are in ``setup.cfg``."""

from setuptools import find_packages, setup

setup(package_dir={"": "src"}, packages=find_packages(where="src", include=["rfbench", "rfbench.*"]))
