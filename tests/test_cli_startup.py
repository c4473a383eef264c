"""`rfbench --help` answers without importing torch (heavy modules load inside each command's run)."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_torch():
    code = ("import sys, contextlib, io\n"
            "import rfbench.benchmark.cli as c\n"
            "p = c.build_parser()\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    p.format_help()\n"
            "heavy = sorted(m for m in ('torch', 'pandas', 'matplotlib', 'scipy', 'numpy') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"building the command line's parsers imported {out}"


def test_checkpoint_functions_still_load_on_use():
    import rfbench.core.io as io

    assert callable(io.load_checkpoint) and callable(io.save_checkpoint)
    from rfbench.benchmark.runner import execute_run, resolve_run

    assert callable(execute_run) and callable(resolve_run)
