"""``rfbench.datasets``: the public face of :mod:`rfbench.benchmark.data` (loading, long-tailed splits, batches).

``import rfbench.datasets`` and ``rfbench.datasets.load_dataset(...)`` both work; the code lives in
``benchmark/data/``.
"""

from rfbench.benchmark.data import *  # noqa: F401,F403  (re-exported by name below)
from rfbench.benchmark.data import __all__  # noqa: F401
