"""``rfbench leaderboard check``: validate an entry against the schema, its track's protocol and itself.

Every finding is a specific message (which field, what it holds, what was
expected); :func:`check_entry` raises :class:`~rfbench.benchmark.leaderboard.schema.EntryError`
listing all of them.  What is checked:

1. the file is JSON and follows ``rfbench.entry/1`` (no unknown keys, right types);
2. it belongs where it is: ``id`` is the file name, ``track`` the directory;
3. the track's protocol: dataset, model, threat (norm, eps), the attack suite,
   the test-set size per class, the ranked checkpoint, and the training keys the
   track fixes (``fixed_train``, with the defense's preset applied), and the
   fidelity (``paper`` or ``released``): one for every entry of a track;
4. internal consistency: each per-class accuracy is a count out of that class's
   test images; the worst case is at most the clean accuracy and every attack it
   covers; every summary equals the one recomputed from its per-class vector
   (:func:`rfbench.benchmark.eval.metrics.summarize`);
5. when a per-sample flag file is given (the entry's ``flags_file`` or ``--flags``),
   the per-class vectors equal those recomputed from the flags;
6. paths (``defense.code``, ``flags_file``) are repository-relative and stay inside it;
7. with ``check_code`` (``rfbench leaderboard check --check-code``, what CI runs in the
   rfbench repository) a repository-relative ``defense.code`` must exist.  Without it the
   check works in a leaderboard-only fork (a directory holding only ``leaderboards/``).

Entries are data: nothing in them is imported or executed, and the flag file is
read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from rfbench.benchmark.eval.metrics import summarize
from rfbench.benchmark.leaderboard.evidence import (
    DatasetUnavailable,
    ExpectedSubset,
    FlagFileError,
    check_headers,
    expected_subset,
    load_checked,
    read_headers,
)
from rfbench.benchmark.leaderboard.external import ANY_MODEL, external_problems, is_external
from rfbench.benchmark.leaderboard.paths import UnsafePathError, is_url, safe_repo_path
from rfbench.benchmark.leaderboard.schema import (
    SUMMARY_FIELDS,
    Entry,
    EntryError,
    Evaluation,
    Track,
    find_track,
    parse_entry,
)
from rfbench.core.errors import RfbenchError
from rfbench.core.perclass import class_counts, per_class_accuracy

TOL = 1e-9
#: the most test images a class may list (a larger count is hostile, not an evaluation)
MAX_COUNT = 10**9
#: what a defense name may look like; it is data: never imported by check or build, whether known here or not
DEFENSE_NAME = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_.:/+-]{0,199}")  # a name, package.module:Class or [/]path/file.py:Class


def read_entry_file(path: str | Path) -> Any:
    """The JSON data of an entry file; malformed JSON is an :class:`EntryError` with line and column."""
    from rfbench.core.errors import RfbenchError
    from rfbench.core.io.atomic import read_text_bounded

    path = Path(path)
    try:
        text = read_text_bounded(path)  # a regular file of bounded size: never a FIFO or /dev/zero
    except RfbenchError as exc:
        msg = str(exc)
        if msg.startswith("file not found"):
            msg = "file not found"
        elif "not UTF-8" in msg:
            msg = "not valid JSON: the file is not UTF-8 text"
        raise EntryError(str(path), [msg]) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise EntryError(str(path), ["not valid JSON: nested too deeply"]) from None
    except json.JSONDecodeError as exc:
        raise EntryError(str(path), [f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"]) from None
    except ValueError as exc:
        raise EntryError(str(path), [f"not valid JSON: {exc}"]) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=TOL)
    return a == b


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else repr(v)


# -- protocol -------------------------------------------------------------------
def check_protocol(entry: Entry, track: Track) -> list[str]:
    """Problems with the entry against its track's protocol (empty when it conforms)."""
    p, problems = track.info.protocol, []
    external = is_external(track)
    if entry.track != track.id:
        problems.append(f"track is '{entry.track}' but the entry is checked against track '{track.id}'")
    if entry.track_version != track.info.version:
        problems.append(f"track_version is {entry.track_version} but track {track.id} is at protocol version "
                        f"{track.info.version}; re-run the entry under the current track.yaml")
    if entry.dataset != p.dataset:
        problems.append(f"dataset is '{entry.dataset}' but track {track.id} uses '{p.dataset}'")
    if entry.model != p.model and not (external and p.model == ANY_MODEL):
        problems.append(f"model is '{entry.model}' but track {track.id} uses '{p.model}'")
    if entry.threat.norm != p.norm:
        problems.append(f"threat norm is {entry.threat.norm} but track {track.id} uses {p.norm}")
    if not _close(entry.threat.eps, p.eps):
        problems.append(f"threat eps is {_fmt(entry.threat.eps)} but track {track.id} uses eps {_fmt(p.eps)}")
    if p.checkpoint not in entry.evaluations:
        problems.append(f"evaluations has no '{p.checkpoint}' checkpoint, which track {track.id} ranks by")
    for which, ev in entry.evaluations.items():
        missing = [a for a in p.attacks if a not in ev.attacks]
        extra = [a for a in ev.attacks if a not in p.attacks]
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"extra {', '.join(extra)}"] if extra else [])
            problems.append(f"evaluations.{which}: attack suite differs from track {track.id}'s "
                            f"({'; '.join(parts)}; the track runs {', '.join(p.attacks)})")
        if sorted(ev.worst_case_over) != sorted(p.attacks):
            problems.append(f"evaluations.{which}: the worst case is over {', '.join(ev.worst_case_over) or 'nothing'}; "
                            f"track {track.id} ranks the worst case over all its attacks ({', '.join(p.attacks)})")
        if p.n_per_class is not None and any(n != p.n_per_class for n in ev.n_per_class):
            problems.append(f"evaluations.{which}: test images per class are {ev.n_per_class} but track {track.id} "
                            f"evaluates {p.n_per_class} per class")
        if p.test_size is not None and sum(ev.n_per_class) != p.test_size:
            problems.append(f"evaluations.{which}: {sum(ev.n_per_class)} test images but track {track.id} "
                            f"evaluates {p.test_size}")
    problems += _threads_problems(entry, track)
    if external:
        return problems + external_problems(entry, track)
    expected = track.train_config_for(entry.defense.name)
    for key in track.info.fixed_train:
        if not _close(entry.train_config.get(key), expected.get(key)):
            problems.append(f"train_config.{key} is {_fmt(entry.train_config.get(key))} but track {track.id} fixes it "
                            f"to {_fmt(expected.get(key))}")
    # one fidelity per track (an entry from before the switch existed trained as ``paper``)
    trained = entry.train_config.get("fidelity", "paper")
    if trained != entry.defense.fidelity:
        problems.append(f"defense.fidelity is '{entry.defense.fidelity}' but the run trained with fidelity '{trained}'")
    if trained != expected.get("fidelity", "paper"):
        problems.append(f"the run trained with fidelity '{trained}' but track {track.id} runs every entry with "
                        f"fidelity '{expected.get('fidelity', 'paper')}'")
    if not DEFENSE_NAME.fullmatch(entry.defense.name):
        problems.append(f"defense.name {entry.defense.name[:120]!r} is not a defense name (a registered name, an "
                        "installed plugin's name, package.module:Class or path/file.py:Class; at most 200 characters)")
    if entry.train_config.get("defense") != entry.defense.name:
        problems.append(f"defense.name is '{entry.defense.name}' but the run trained '{entry.train_config.get('defense')}'")
    if entry.train_config.get("seed") != entry.seed:
        problems.append(f"seed is {entry.seed} but the run trained with seed {entry.train_config.get('seed')}")
    return problems


def _threads_problems(entry: Entry, track: Track) -> list[str]:
    """A CPU entry trained and evaluated with the track's ``protocol.threads`` (the thread count sets the float
    reduction order, so entries with another count are not comparable bit for bit)."""
    want = track.info.protocol.threads
    if want is None or entry.cost.accelerator != "cpu":
        return []
    stages = entry.cost.threads_by_stage()
    if stages is not None and is_external(track):
        stages.pop("train", None)  # nothing is trained on an external track
    if stages is None:
        return [f"the entry records no CPU thread count (cost.cpu_threads) but track {track.id} fixes {want} "
                "(protocol.threads); re-run it with `rfbench run`, which applies the track's count"]
    return [f"cost.cpu_threads.{stage} is {counts} but track {track.id} fixes {want} thread(s) (protocol.threads); "
            "re-run it with `rfbench run`, which applies the track's count"
            for stage, counts in sorted(stages.items()) if counts != [want]]


# -- internal consistency ----------------------------------------------------------
def check_evaluation(which: str, ev: Evaluation, classes: list[str]) -> list[str]:
    """Per-class vectors well formed and counts; worst case below clean and attacks; summaries recomputed."""
    C, at, problems = len(classes), f"evaluations.{which}", []
    names = ["clean", *ev.attacks, "worst_case"]
    if C == 0:
        return [f"{at}: the entry lists no classes"]
    if len(ev.n_per_class) != C or any(not isinstance(n, int) or not 1 <= n <= MAX_COUNT for n in ev.n_per_class):
        return [f"{at}.n_per_class must list {C} counts from 1 to {MAX_COUNT} (one per class), got "
                f"{_clip([str(n)[:20] for n in ev.n_per_class])}"]
    if set(ev.per_class) != set(names):
        return [f"{at}.per_class must have exactly {', '.join(names)}; has {', '.join(ev.per_class)}"]
    if set(ev.summary) != set(names):
        return [f"{at}.summary must have exactly {', '.join(names)}; has {', '.join(ev.summary)}"]
    bad_cover = [a for a in ev.worst_case_over if a not in ev.attacks]
    if bad_cover:
        return [f"{at}.worst_case_over names {', '.join(bad_cover)}, which are not among its attacks"]
    vecs: dict[str, np.ndarray] = {}
    for name in names:
        v = ev.per_class[name]
        if not isinstance(v, list) or len(v) != C or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
            problems.append(f"{at}.per_class.{name} must be a list of {C} numbers")
            continue
        arr = np.asarray(v, dtype=float)
        out = [k for k in range(C) if not 0 <= arr[k] <= 1]
        if out:
            problems.append(f"{at}.per_class.{name}[{out[0]}] = {_fmt(arr[out[0]])} is not an accuracy in [0, 1]")
            continue
        for k in range(C):
            count = arr[k] * ev.n_per_class[k]
            if abs(count - round(count)) > 1e-6:
                problems.append(f"{at}.per_class.{name}[{k}] ({classes[k]}) = {_fmt(arr[k])} is not a count out of "
                                f"its {ev.n_per_class[k]} test images (hand-edited?)")
                break
        vecs[name] = arr
    if "worst_case" in vecs:
        for name in ["clean", *ev.worst_case_over]:
            if name in vecs:
                k = int(np.argmax(vecs["worst_case"] - vecs[name]))
                if vecs["worst_case"][k] > vecs[name][k] + TOL:
                    problems.append(f"{at}.per_class.worst_case[{k}] ({classes[k]}) = {_fmt(vecs['worst_case'][k])} "
                                    f"exceeds per_class.{name}[{k}] = {_fmt(vecs[name][k])}: a worst case cannot beat "
                                    "the accuracy it is the minimum of")
    for name, arr in vecs.items():
        recomputed = summarize(arr)
        given = ev.summary[name]
        if not isinstance(given, dict):
            problems.append(f"{at}.summary.{name} must be a mapping")
            continue
        for key in SUMMARY_FIELDS:
            if key not in given:
                problems.append(f"{at}.summary.{name} misses '{key}'")
            elif not _close(given[key], recomputed[key]) and not (key == "nsd" and given[key] is None):
                problems.append(f"{at}.summary.{name}.{key} is {_fmt(given[key])} but its per-class vector gives "
                                f"{_fmt(recomputed[key])}")
    return problems


def check_flags(which: str, ev: Evaluation, flags_path: Path, track: Track | None = None,
                expected: ExpectedSubset | None = None) -> list[str]:
    """The per-class vectors of ``ev`` recomputed from a per-sample flag file on exactly the track's test images.

    The file is inspected before it is read (:func:`~rfbench.benchmark.leaderboard.evidence.read_flags`): its
    arrays must have the shapes of the track's test subset.  With ``expected`` (the track's dataset is here) the
    flags must list exactly the track's test images, with the dataset's labels.
    """
    at = f"evaluations.{which}"
    flags_path = Path(flags_path)
    try:
        headers = read_headers(flags_path)  # before the entry's own numbers are trusted for anything
        n = (len(expected.index) if expected is not None
             else (track.info.protocol.test_size if track is not None else None) or sum(ev.n_per_class))
        check_headers(headers, flags_path.name, n, len(ev.attacks))
        flags = load_checked(flags_path)
    except FlagFileError as exc:
        return [f"{at}.flags_file: {exc}"]
    C = len(ev.n_per_class)
    problems = []
    if not flags.done.all():
        problems.append(f"{at}.flags_file: the evaluation in {flags_path.name} is unfinished")
    if sorted(flags.labels) != sorted(ev.attacks):
        return problems + [f"{at}.flags_file holds attacks {', '.join(flags.labels)}, the entry lists {', '.join(ev.attacks)}"]
    for name in ("y", "clean_pred", "adv_pred"):
        arr = getattr(flags, name)
        low = -1 if name != "y" else 0
        if arr.size and (int(arr.min()) < low or int(arr.max()) >= C):
            return problems + [f"{at}.flags_file: '{name}' holds {int(arr.min())}..{int(arr.max())}, not classes "
                               f"0..{C - 1}" + (" (or -1)" if low else "")]
    if len(np.unique(flags.index)) != len(flags.index):
        problems.append(f"{at}.flags_file lists a test image twice")
    if expected is not None and track is not None:
        if not np.array_equal(np.sort(flags.index), expected.index):
            extra = np.setdiff1d(flags.index, expected.index)
            return problems + [f"{at}.flags_file: the evaluated images are not the track's test subset ("
                               f"{len(extra)} of {len(flags.index)} are other images, e.g. test image "
                               f"{int(extra[0]) if len(extra) else '-'}); the track evaluates "
                               f"{track.info.protocol.n_per_class} fixed images per class"]
        truth = expected.y[np.searchsorted(expected.index, flags.index)]
        wrong = np.flatnonzero(flags.y != truth)
        if wrong.size:
            i = int(wrong[0])
            return problems + [f"{at}.flags_file: test image {int(flags.index[i])} is labelled {int(flags.y[i])} "
                               f"but the dataset labels it {int(truth[i])} ({wrong.size} labels differ)"]
    counts = class_counts(flags.y, C).tolist()
    if counts != list(ev.n_per_class):
        return problems + [f"{at}.n_per_class is {ev.n_per_class} but the flag file has {counts} images per class"]
    correct = {"clean": flags.clean_correct, **{a: flags.robust(a) for a in ev.attacks},
               "worst_case": flags.worst_case(list(ev.worst_case_over))}
    for name, ok in correct.items():
        from_flags = per_class_accuracy(ok, flags.y, C)
        given = np.asarray(ev.per_class.get(name, []), dtype=float)
        if given.shape != from_flags.shape:
            continue
        diff = np.flatnonzero(np.abs(given - from_flags) > TOL)
        if diff.size:
            k = int(diff[0])
            problems.append(f"{at}.per_class.{name}[{k}] is {_fmt(float(given[k]))} but the per-sample flags give "
                            f"{_fmt(float(from_flags[k]))}")
    return problems


def _resolve(text: str, root: Path, what: str, problems: list[str]) -> Path | None:
    try:
        return safe_repo_path(text, root, what)
    except UnsafePathError as exc:
        problems.append(str(exc))
        return None


def check_entry(
    data: Any,
    *,
    where: str,
    root: Path,
    entry_path: Path | None = None,
    track: Track | None = None,
    flags: dict[str, Path] | None = None,
    check_code: bool = False,
    notes: list[str] | None = None,
) -> Entry:
    """Validate entry ``data``; returns the typed :class:`Entry` or raises :class:`EntryError` listing every problem.

    ``flags`` maps checkpoints to flag files given explicitly (trusted paths,
    e.g. from ``--flags`` or a run directory); otherwise each evaluation's
    ``flags_file`` is used, resolved safely inside ``root``.  Every evaluation
    needs its flags: an entry ranks only on evidence.  When the track's dataset
    is not on this machine, the test images cannot be verified: a line saying
    so is appended to ``notes`` and the rest is still checked.
    """
    entry = parse_entry(data, where)
    problems: list[str] = []
    if entry_path is not None:
        if entry_path.stem != entry.id:
            problems.append(f"id '{entry.id}' must be the file name (the file is {entry_path.name})")
        if entry_path.parent.name != entry.track:
            problems.append(f"track is '{entry.track}' but the entry lies in {entry_path.parent.name}/")
    if track is None:
        try:
            track = find_track(entry.track, root)
        except RfbenchError as exc:
            raise EntryError(where, problems + [str(exc)]) from None
    problems += check_protocol(entry, track)
    expected = None
    try:
        expected = expected_subset(track)
    except DatasetUnavailable as exc:
        if notes is not None:
            notes.append(f"unverified: {exc}; which test images were evaluated was not checked")
    if expected is not None and tuple(entry.classes) != expected.classes:
        problems.append(f"classes are {_clip(entry.classes)} but {entry.dataset} names its classes "
                        f"{_clip(list(expected.classes))}, in that order")
    if entry.cost.accelerator == "cuda" and entry.cost.gpu_hours is None:
        problems.append("cost.gpu_hours is required for a run on a GPU")
    if not is_url(entry.defense.code):
        path = _resolve(entry.defense.code, root, "defense.code", problems)
        if check_code and path is not None and not path.is_file():
            problems.append(f"defense.code '{entry.defense.code}' does not exist in the repository; "
                            "give the defense's source file or an https:// URL")
    for which, ev in entry.evaluations.items():
        if len(ev.n_per_class) != len(entry.classes):
            problems.append(f"evaluations.{which}.n_per_class has {len(ev.n_per_class)} classes, classes lists {len(entry.classes)}")
            continue
        if ev.checkpoint_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", ev.checkpoint_sha256):
            problems.append(f"evaluations.{which}.checkpoint_sha256 is not a sha256 (64 lowercase hex digits)")
        if ev.checks == "fail":
            problems.append(f"evaluations.{which}: the evaluation's sanity checks failed; such a result cannot be ranked")
        own = check_evaluation(which, ev, entry.classes)
        problems += own
        path = (flags or {}).get(which)
        if path is None and ev.flags_file is not None:
            path = _resolve(ev.flags_file, root, f"evaluations.{which}.flags_file", problems)
        elif path is None:
            problems.append(f"evaluations.{which} has no per-sample flag file: an entry ranks only on evidence "
                            "(submit it with `rfbench leaderboard submit`, which copies the run's flags)")
        if path is not None and not own:
            problems += check_flags(which, ev, path, track, expected)
    if problems:
        raise EntryError(where, problems)
    return entry


def _clip(values: list[str], most: int = 120) -> str:
    text = repr(values)
    return text if len(text) <= most else text[:most] + "...]"


def check_entry_file(path: str | Path, root: Path, flags: dict[str, Path] | None = None,
                     check_code: bool = False, notes: list[str] | None = None) -> Entry:
    """Read and check ``leaderboards/<track>/<id>.json``, in isolation: any failure is an :class:`EntryError`.

    A hostile entry can only reject itself: an error no check foresaw (an exception
    while reading it, or an allocation that fails) becomes one line about this entry.
    """
    path = Path(path)
    try:
        return check_entry(read_entry_file(path), where=str(path), root=root, entry_path=path, flags=flags,
                           check_code=check_code, notes=notes)
    except EntryError:
        raise
    except Exception as exc:  # noqa: BLE001 - isolation: one entry rejects only itself (MemoryError included)
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise EntryError(str(path), [f"could not be checked: {type(exc).__name__}: {msg}"]) from None
