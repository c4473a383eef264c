import sys

from rfbench.benchmark.cli import main

sys.exit(main())
