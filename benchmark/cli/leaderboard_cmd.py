"""``rfbench leaderboard``: check entries, submit a finished run, and build the leaderboard pages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  rfbench run leaderboards/fashion-mnist-linf/track.yaml --defense trades
  rfbench leaderboard submit runs/fashion-mnist-linf/trades-s0 --track fashion-mnist-linf
  rfbench leaderboard check leaderboards/fashion-mnist-linf/trades-s0.json
  rfbench leaderboard check                    (every entry of every track, as CI does)
  rfbench leaderboard build                    (leaderboards/README.md, <track>/README.md, <track>/heatmap.png)
  rfbench leaderboard build --html site        (also the static web leaderboard: site/index.html, offline)
  rfbench leaderboard check --check-code       (CI in the rfbench repository: defense.code must exist too)
  rfbench leaderboard audit leaderboards/fashion-mnist-linf/trades-s0.json --checkpoint runs/.../checkpoint-best.pt
                                               (re-run a random sample of the evaluation with the checkpoint)
  rfbench leaderboard compare runs/fashion-mnist-linf/pgd-at-s1 --track fashion-mnist-linf
                                               (does a rerun reproduce the committed entries within seed noise?)

Entries are JSON data (schema rfbench.entry/1), never code: check and build import nothing an
entry names (a plugin defense is a name).  check validates the schema, the track's protocol
(eps, attacks, test-set size, fixed training keys), requires the per-sample flag file to cover
exactly the track's test images with the dataset's labels, recomputes every per-class vector
from it and every summary from those, and rejects paths that leave the repository.  Each entry
is checked in isolation: a rejected one is one line and the others are still checked and built.  Entries whose per-sample predictions
equal another entry's are listed unranked ("identical to X"); submit refuses them unless
--allow-identical.  submit and build write only into a directory holding leaderboards/
(the current one, or --root).  See leaderboards/SUBMITTING.md.
"""


def _flags(items: list[str], default_ckpt: str) -> dict[str, Path]:
    out = {}
    for item in items or []:
        which, sep, path = item.partition("=")
        if not sep:
            which, path = default_ckpt, item
        out[which] = Path(path)
    return out


def run_check(args: argparse.Namespace) -> int:
    from rfbench.benchmark.leaderboard import check_entry_file, leaderboards_root
    from rfbench.benchmark.leaderboard.check import read_entry_file
    from rfbench.benchmark.leaderboard.schema import find_track
    from rfbench.core.errors import RfbenchError

    root = leaderboards_root(args.root)
    paths = [Path(p) for p in args.entries] or sorted((root / "leaderboards").glob("*/*.json"))
    if args.flags and len(paths) != 1:
        print("rfbench: error: --flags needs exactly one ENTRY.json", file=sys.stderr)
        return 2
    failed, passed = 0, []
    for path in paths:
        notes: list[str] = []
        try:
            flags = None
            if args.flags:
                data = read_entry_file(path)
                track_id = data.get("track") if isinstance(data, dict) else None
                ck = find_track(track_id, root).info.protocol.checkpoint if isinstance(track_id, str) else "best"
                flags = _flags(args.flags, ck)
            entry = check_entry_file(path, root, flags=flags, check_code=args.check_code, notes=notes)
            passed.append(entry)
            print(f"{'unverif' if notes else 'ok     '} {path} ({entry.track}, {entry.name})")
            for note in notes:
                print(f"        - {note}")
        except RfbenchError as exc:  # an EntryError, or a track named by --flags that does not exist
            failed += 1
            print(f"REJECT  {getattr(exc, 'where', path)}")
            for problem in getattr(exc, "problems", [str(exc)]):
                print(f"        - {problem}")
    for note in identical_notes(passed, root):
        print(f"note    {note}")
    print(f"{len(paths) - failed}/{len(paths)} entries pass", file=sys.stderr)
    return 1 if failed else 0


def identical_notes(entries: list, root: Path) -> list[str]:
    """One line per checked entry whose per-sample predictions equal another's on its track (shown unranked)."""
    from rfbench.benchmark.leaderboard.history import entry_order, read_ledger
    from rfbench.benchmark.leaderboard.ranking import duplicates, entry_data
    from rfbench.benchmark.leaderboard.schema import find_track

    by_track: dict[str, list] = {}
    for e in entries:
        by_track.setdefault(e.track, []).append(e)
    notes = []
    for track_id, members in sorted(by_track.items()):
        track = find_track(track_id, root)
        data = [entry_data(e, track.info.protocol.checkpoint, root) for e in members]
        order = entry_order(track.path.parent, root)
        broken = read_ledger(track.path.parent)[1]
        if broken:
            notes.append(f"{track_id}: {broken}; it gives no order among identical entries")
        for eid, ref in sorted(duplicates(data, track.info.baselines, order).items()):
            notes.append(f"{track_id}/{eid} is identical to {ref} (the same per-sample predictions): "
                         "the page lists it unranked")
    return notes


def run_submit(args: argparse.Namespace) -> int:
    from rfbench.benchmark.leaderboard import find_track
    from rfbench.benchmark.leaderboard.schema import writable_root
    from rfbench.benchmark.leaderboard.submit import submit
    from rfbench.core.io.atomic import remove_stale_temps
    from rfbench.core.io.lock import exclusive_leaderboard

    root = writable_root(args.root)
    with exclusive_leaderboard(root):
        track = find_track(args.track, root)
        for folder in (track.path.parent, track.path.parent / "flags"):  # left by a killed submit (only writers
            remove_stale_temps(folder)                                    # of the leaderboard hold this lock)
        path = submit(args.run_dir, track, root, entry_id=args.id, name=args.name, code=args.code,
                      paper=args.paper or "", force=args.force, allow_identical=args.allow_identical)
    print(f"wrote {path}; now run `rfbench leaderboard build` and open a pull request", file=sys.stderr)
    return 0


def run_build(args: argparse.Namespace) -> int:
    from rfbench.benchmark.leaderboard.build import build
    from rfbench.benchmark.leaderboard.schema import writable_root
    from rfbench.core.io.lock import exclusive_leaderboard

    root = writable_root(args.root)
    with exclusive_leaderboard(root):
        written = build(root, html=Path(args.html) if args.html else None)
    for path in written:
        print(path)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    import json

    from rfbench.benchmark.leaderboard import find_track, leaderboards_root
    from rfbench.benchmark.leaderboard.compare import compare_run, render

    root = leaderboards_root(args.root)
    report = compare_run(args.run_dir, find_track(args.track, root), root, k=args.k)
    print(render(report))
    if args.json:
        rows = [{"metric": r.metric, "ours": r.ours, "committed": list(r.committed), "diff": r.diff,
                 "sigma_seed": r.sigma_seed, "sigma_test": r.sigma_test, "tolerance": r.tolerance, "ok": r.ok}
                for r in report.rows]
        Path(args.json).write_text(json.dumps({"track": report.track, "defense": report.defense, "seed": report.seed,
                                               "checkpoint": report.checkpoint, "k": report.k, "rows": rows,
                                               "committed": [e.id for e in report.committed],
                                               "same_seed_identical": report.same_seed_identical, "ok": report.ok},
                                              indent=2) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


def run_audit(args: argparse.Namespace) -> int:
    from rfbench.benchmark.leaderboard import find_track, leaderboards_root
    from rfbench.benchmark.leaderboard.audit import audit_entry, write_record
    from rfbench.benchmark.leaderboard.schema import writable_root

    root = writable_root(args.root) if args.record else leaderboards_root(args.root)
    report = audit_entry(args.entry, args.checkpoint, root, seed=args.seed, device=args.device,
                         fraction=args.fraction)
    print(report.text())
    if args.record:
        print(f"wrote {write_record(report, find_track(report.track, root))}", file=sys.stderr)
    return 0 if report.passed else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rfbench.benchmark.cli import HelpFormatter, add_allow_code

    p = sub.add_parser("leaderboard", help="check, submit and build leaderboard entries", description=__doc__,
                       epilog=EPILOG, formatter_class=HelpFormatter)
    lsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--root", metavar="DIR", help="repository root holding leaderboards/ (default: the current "
                       "directory if it has one; else this checkout for check and compare, and an error for submit "
                       "and build, which never write into the installed package)")

    c = lsub.add_parser("check", help="validate entries (all of them without arguments)", epilog=EPILOG,
                        formatter_class=HelpFormatter)
    c.add_argument("entries", nargs="*", metavar="ENTRY.json", help="entry files (default: every leaderboards/*/*.json)")
    c.add_argument("--flags", action="append", default=[], metavar="[CHECKPOINT=]FILE.npz",
                   help="per-sample flag file to recompute the per-class vectors from (default checkpoint: the track's ranked one)")
    c.add_argument("--check-code", action="store_true", help="also require each entry's repository-relative "
                   "defense.code to exist under the root (CI in the rfbench repository; leave it off in a "
                   "leaderboard-only fork)")
    common(c)
    c.set_defaults(func=run_check)

    s = lsub.add_parser("submit", help="write a checked entry from a finished `rfbench run`", epilog=EPILOG,
                        formatter_class=HelpFormatter)
    s.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding result.json")
    s.add_argument("--track", required=True, help="track id (a directory of leaderboards/)")
    s.add_argument("--id", help="entry id, the file name (default: <defense>-s<seed>)")
    s.add_argument("--name", help="display name (default: the defense name)")
    s.add_argument("--code", help="where the defense's code lives: a repository path or an https:// URL "
                   "(default: the source file of a defense inside this repository)")
    s.add_argument("--paper", help="citation of the method (default: the paper `rfbench list defenses` cites for a "
                   "registered defense)")
    s.add_argument("--force", action="store_true", help="replace an existing entry with the same id")
    s.add_argument("--allow-identical", action="store_true", help="submit even if the run's per-sample predictions "
                   "equal a committed entry's (the page then lists it unranked, as identical to that entry)")
    common(s)
    s.set_defaults(func=run_submit)

    b = lsub.add_parser("build", help="render leaderboards/README.md, the track pages and heat maps", epilog=EPILOG,
                        formatter_class=HelpFormatter)
    b.add_argument("--html", metavar="DIR", help="also write the static web leaderboard into DIR (index.html, one "
                   "page per track and per entry; works offline, no external assets)")
    common(b)
    b.set_defaults(func=run_build)

    a = lsub.add_parser("audit", help="re-run a seeded random sample of an entry's evaluation with its checkpoint",
                        epilog=EPILOG, formatter_class=HelpFormatter,
                        description="Re-run whole evaluation batches, drawn at random until they hold at least "
                        "max(100, 5%) of the entry's test images, with the submitted checkpoint, the track's attacks "
                        "and the harness's per-batch seeds, and compare every image with the entry's flags. Refused "
                        "when the checkpoint's sha256 is not the one the entry records. Exit status 1 when an image "
                        "the flags call correct or robust falls. See docs/leaderboard-threat-model.md.")
    a.add_argument("entry", metavar="ENTRY.json", help="the entry file")
    a.add_argument("--checkpoint", required=True, metavar="FILE", help="the checkpoint the entry was evaluated with "
                   "(checkpoint-best.pt of its run)")
    a.add_argument("--seed", type=int, help="seed of the sample (default: random, printed so the audit can be replayed)")
    a.add_argument("--fraction", type=float, default=0.05, help="re-run at least this fraction of the test images "
                   "(and at least 100; default 0.05)")
    a.add_argument("--device", default="cpu", help="device to re-run on (default cpu; the track's hardware)")
    a.add_argument("--record", action="store_true", help="write the result to leaderboards/<track>/audits/<id>.json "
                   "(what a track with require_audit ranks by)")
    add_allow_code(a, "the entry's defense (a file.py:Class or module:Class plugin: the re-run builds its model)")
    common(a)
    a.set_defaults(func=run_audit)

    m = lsub.add_parser("compare", help="does a rerun reproduce the committed entries of its defense?", epilog=EPILOG,
                        formatter_class=HelpFormatter,
                        description="Compare a finished `rfbench run` of a track with the track's committed entries "
                        "of the same defense and defense arguments: mean robust, worst-class robust and clean "
                        "accuracy on the ranked checkpoint, each within k x sigma x sqrt(1 + 1/m) of the mean of the "
                        "m committed seeds, sigma being the larger of the seeds' standard deviation and the binomial "
                        "test-set standard deviation. Exit status 1 when a number is outside.")
    m.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding result.json")
    m.add_argument("--track", required=True, help="track id (a directory of leaderboards/)")
    m.add_argument("--k", type=float, default=2.0, help="tolerance in standard deviations")
    m.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    common(m)
    m.set_defaults(func=run_compare)
