"""``python -m rfbench ...`` is the ``rfbench`` command (also under ``torchrun -m rfbench``)."""

import sys

from rfbench.benchmark.cli import main

sys.exit(main())
