"""The one version number of rfbench (``setup.cfg`` reads it; results and entries record it)."""

__version__ = "0.2.0"
