"""Packaging: the top-level folders ``benchmark/``, ``attacks/`` and ``defenses/`` install as the
subpackages ``rfbench.benchmark``, ``rfbench.attacks`` and ``rfbench.defenses``, so rfbench never
claims a generic top-level import name (a research repository's own ``attacks.py`` or
``benchmark/`` keeps working beside it). Metadata and dependencies are in ``setup.cfg``."""

import runpy
from pathlib import Path

from setuptools import find_packages, setup

ROOTS = runpy.run_path(str(Path(__file__).parent / "rfbench" / "_checkout.py"))["ROOTS"]

setup(
    packages=["rfbench"] + [f"rfbench.{p}" for p in find_packages(include=[*ROOTS, *(f"{r}.*" for r in ROOTS)])],
    package_dir={"rfbench": "rfbench", **{f"rfbench.{r}": r for r in ROOTS}},
)
