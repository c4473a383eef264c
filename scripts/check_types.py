"""Run pyright (basic mode, ``pyrightconfig.json``) and hold its errors to a committed baseline that may only shrink.

The baseline, ``pyright-baseline.json``, counts errors per file and rule. The check fails when any
file has more errors of a rule than its baseline allows (a new error), and reports where the code
got better so that the baseline can be lowered with ``--update``, which refuses to raise any count.

    python scripts/check_types.py            # the CI check
    python scripts/check_types.py --update   # lower the baseline after fixing errors
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "pyright-baseline.json"


def pyright_errors() -> Counter[str]:
    """Error counts keyed ``"<file relative to the checkout>::<rule>"``."""
    exe = shutil.which("pyright", path=str(Path(sys.executable).parent)) or shutil.which("pyright")
    if exe is None:
        sys.exit("check_types: pyright is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--outputjson", "--pythonpath", sys.executable], cwd=ROOT, capture_output=True,
                          text=True)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        sys.exit(f"check_types: pyright did not run (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    counts: Counter[str] = Counter()
    for d in report["generalDiagnostics"]:
        if d["severity"] == "error":
            counts[f"{Path(d['file']).relative_to(ROOT).as_posix()}::{d.get('rule', 'error')}"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="lower the baseline to today's counts (never raises one)")
    args = parser.parse_args(argv)
    now = pyright_errors()
    base = Counter(json.loads(BASELINE.read_text())) if BASELINE.is_file() else Counter()
    worse = {k: (base[k], n) for k, n in now.items() if n > base[k]}
    better = {k: (n, now[k]) for k, n in base.items() if now[k] < n}
    if worse:
        print(f"pyright: {sum(n - b for b, n in worse.values())} new error(s) above the baseline:")
        for k, (b, n) in sorted(worse.items()):
            print(f"  {k}: {n} (baseline {b})")
        print("run `pyright` for the messages")
        return 1
    if args.update:
        BASELINE.write_text(json.dumps(dict(sorted((k, n) for k, n in now.items() if n)), indent=1) + "\n")
        print(f"pyright baseline lowered: {sum(base.values())} -> {sum(now.values())} errors")
        return 0
    print(f"pyright: {sum(now.values())} errors, none above the baseline ({sum(base.values())})")
    if better:
        print(f"  {len(better)} file/rule counts fell below the baseline: run `python scripts/check_types.py --update`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
