"""Fuzz every reader (IDX, images, checkpoints, results, the layout cache, calibrations, launch variables) under an address-space limit.

The readers run in a child process (``fuzz_readers_child.py``) whose address space is capped with
``RLIMIT_AS`` after its imports, so a decompression bomb or an unbounded allocation fails this test
instead of the machine.  Every mutated or hostile file must give a result or a one-line
``RfbenchError``.  ``RFBENCH_FUZZ_CASES`` (default 40 per seed file) sets the depth.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from faultkit import env

CHILD = Path(__file__).with_name("fuzz_readers_child.py")


def test_every_reader_survives_mutations_and_bombs_under_a_memory_limit(tmp_path):
    cases = os.environ.get("RFBENCH_FUZZ_CASES", "40")
    proc = subprocess.run([sys.executable, str(CHILD), str(tmp_path), cases, "26"], capture_output=True, text=True,
                          env=env(), timeout=600)
    assert "address space limited" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " 0 failures" in proc.stdout


def test_the_limit_is_real(tmp_path):
    """The same limit makes an unbounded allocation fail in the child rather than succeed."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from fuzz_readers_child import limit_address_space, HEADROOM\n"
            "limit_address_space()\n"
            "try:\n    bytearray(2 * HEADROOM)\nexcept MemoryError:\n    print('refused')\n") % str(CHILD.parent)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120)
    assert proc.stdout.strip() == "refused", proc.stdout + proc.stderr
