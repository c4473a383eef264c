"""The package layout, and imports from a source checkout that is not installed.

The top-level folders :data:`ROOTS` of the repository are the subpackages
``rfbench.<root>`` (``setup.py`` installs them so and reads :data:`ROOTS` from
here).  In a plain checkout on ``PYTHONPATH`` (``PYTHONPATH=/path/to/rfbench``,
no ``pip install``) nothing maps them; :func:`install` adds a finder that does,
for exactly those names, ahead of every installed mapping: the checkout whose
``rfbench/`` was imported also supplies its subpackages, even where another
copy is installed in editable mode (whose finder would otherwise hand out that
copy's ``rfbench.benchmark`` under this ``rfbench``).  Standard library only.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

#: repository folders installed as ``rfbench.<name>``
ROOTS = ("benchmark", "attacks", "defenses")


class CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``rfbench.<root>`` as the folder ``<checkout>/<root>``."""

    def __init__(self, checkout: Path):
        self.checkout = str(checkout)
        self.names = {f"rfbench.{r}" for r in ROOTS}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.checkout])


def install(package_dir: Path) -> None:
    """Add the finder when ``package_dir`` (``rfbench/``) sits in a checkout rather than an install."""
    checkout = package_dir.parent
    if (package_dir / ROOTS[0]).is_dir() or not (checkout / "setup.py").is_file():
        return  # a wheel install carries the subpackages inside rfbench/
    if not all((checkout / r / "__init__.py").is_file() for r in ROOTS):
        return
    if not any(isinstance(f, CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, CheckoutFinder(checkout))
