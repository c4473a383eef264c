"""Fuzz the validators: random and mutated configs, YAML texts and attack specs.

Every input must give either a valid object (whose every field then honours
its declared type, range and choices, and is finite) or a one-line
:class:`~rfbench.core.errors.RfbenchError`; any other exception, or a message with
a line break, is a bug.  The counts of inputs tried are printed at the end
(run with ``-s``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfbench.attacks.spec import check_specs
from rfbench.benchmark.eval.harness import EvalConfig
from rfbench.benchmark.train.config import TrainConfig
from rfbench.core.config import apply_overrides, dump_yaml, from_dict, load_yaml
from rfbench.core.errors import RfbenchError

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
TRIED: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\nfuzzed inputs: {dict(TRIED)}; total {sum(TRIED.values())}")


def outcome(fn, *args):
    """``fn(*args)`` -> the object, or None after checking that the error is a one-line RfbenchError."""
    try:
        return fn(*args)
    except RfbenchError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        assert "Traceback" not in msg
        return None


def assert_honours_fields(obj) -> None:
    """A validated dataclass: every value has its declared type, range, choice, and is finite."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        tp = hints[f.name]
        args = typing.get_args(tp)
        if v is None:
            assert type(None) in args or tp is typing.Any, f.name
            continue
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        base = next(a for a in args if a is not type(None)) if union else tp
        origin = typing.get_origin(base) or base
        if origin in (int, float, str, bool, list, dict):
            assert isinstance(v, origin) and not (origin is int and isinstance(v, bool)), (f.name, v)
        for x in (v if isinstance(v, list) else [v]):
            if isinstance(x, float):
                assert math.isfinite(x), (f.name, v)
        if "range" in f.metadata:
            lo, hi = f.metadata["range"]
            for x in (v if isinstance(v, list) else [v]):
                assert (lo is None or x >= lo) and (hi is None or x <= hi), (f.name, v)
        if "choices" in f.metadata:  # a list field's choices apply to each item
            for x in (v if isinstance(v, list) else [v]):
                assert x in f.metadata["choices"], (f.name, v)


# -- strategies ------------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["8/255", "1/0", "nan", "-inf", "1e999", "0x10", "", "1/3/5"]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=6)


def field_values(cls) -> dict[str, st.SearchStrategy]:
    """Plausible and implausible values per field: boundaries, choices, and anything at all."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        plausible = [values]
        if "range" in f.metadata:
            lo, hi = f.metadata["range"]
            integral = int in (typing.get_args(hints[f.name]) or (hints[f.name],))
            steps = (-1, 0, 1) if integral else (-1, -1e-9, 0, 1e-9, 1)
            edges = [b + d for b in (lo, hi) if b is not None for d in steps]
            plausible.append(st.sampled_from(edges))
            if integral:
                plausible.append(st.integers(int(lo or 0), int(hi) if hi is not None else 10**6))
            else:
                plausible.append(st.floats(lo, hi))
        if "choices" in f.metadata:
            plausible.append(st.sampled_from(list(f.metadata["choices"]) + ["", "LINF", "none"]))
        out[f.name] = st.one_of(*plausible)
    return out


def config_dicts(cls):
    fields = field_values(cls)
    known = st.sampled_from(sorted(fields)).flatmap(lambda k: st.tuples(st.just(k), fields[k]))
    junk = st.tuples(st.text(max_size=10) | st.integers() | st.none(), values)
    pairs = st.lists(st.one_of(known, known, known, junk), max_size=6)
    return pairs.map(dict)


def mutated(base: dict, cls):
    """A valid base config with a few keys replaced, deleted or added."""
    fields = field_values(cls)
    edit = st.one_of(
        st.sampled_from(sorted(fields)).flatmap(lambda k: st.tuples(st.just("set"), st.just(k), fields[k])),
        st.tuples(st.just("del"), st.sampled_from(sorted(base)), st.none()),
        st.tuples(st.just("add"), st.text(min_size=1, max_size=10), values),
    )

    def apply(edits):
        d = dict(base)
        for op, k, v in edits:
            if op == "del":
                d.pop(k, None)
            else:
                d[k] = v
        return d

    return st.lists(edit, min_size=1, max_size=4).map(apply)


BASE_TRAIN = yaml.safe_load(dump_yaml(TrainConfig(dataset="fashion-mnist", epochs=3, eps=0.1, steps=2)))
SEED_YAMLS = sorted(p.read_text() for p in (REPO / "configs").rglob("*.yaml"))[:20] or [dump_yaml(TrainConfig())]


BAD_SCALARS = ["[", "{a: 1", "- x", "!!int x", "2001-02-30", ".nan", "~", "1e999", "yes", "0o17", "&a", "*a", "| ",
               '"unterminated', "!!python/object/apply:os.system ['true']", "8/255"]


@st.composite
def mutated_yaml(draw):
    """A real config file from configs/ with random character- and line-level edits."""
    text = draw(st.sampled_from(SEED_YAMLS))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "dup-line", "swap-lines", "indent", "replace-value"]))
        lines = text.splitlines()
        i = draw(st.integers(0, max(0, len(text) - 1)))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
        elif op == "insert":
            text = text[:i] + draw(st.text(alphabet=":-[]{}'\"#&*!|>%@`\t\n ,?=/\\0123456789abc.", max_size=6)) + text[i:]
        elif lines and op == "dup-line":
            j = draw(st.integers(0, len(lines) - 1))
            text = "\n".join(lines[: j + 1] + [lines[j]] + lines[j + 1:])
        elif len(lines) > 1 and op == "swap-lines":
            j = draw(st.integers(0, len(lines) - 2))
            lines[j], lines[j + 1] = lines[j + 1], lines[j]
            text = "\n".join(lines)
        elif lines and op == "indent":
            j = draw(st.integers(0, len(lines) - 1))
            lines[j] = draw(st.sampled_from(["  ", "\t", " "])) + lines[j]
            text = "\n".join(lines)
        elif lines and op == "replace-value":
            j = draw(st.integers(0, len(lines) - 1))
            key = lines[j].split(":", 1)[0]
            lines[j] = f"{key}: {draw(st.sampled_from(BAD_SCALARS))}"
            text = "\n".join(lines)
    return text


# -- properties ------------------------------------------------------------------------------------
def parses_honestly(cls, data) -> None:
    """``data`` is either rejected with a one-line RfbenchError or parsed into a ``cls`` that honours its fields."""
    cfg = outcome(from_dict, cls, data)
    if cfg is not None:
        assert_honours_fields(cfg)


@FUZZ
@given(config_dicts(TrainConfig))
def test_random_train_config_dicts(data):
    TRIED["train-config dicts (random)"] += 1
    parses_honestly(TrainConfig, data)


@FUZZ
@given(mutated(BASE_TRAIN, TrainConfig))
def test_mutated_train_config_dicts(data):
    TRIED["train-config dicts (mutated)"] += 1
    parses_honestly(TrainConfig, data)


@FUZZ
@given(st.one_of(mutated_yaml(), st.text(max_size=200), st.binary(max_size=100)))
def test_yaml_texts(tmp_path_factory, text):
    TRIED["YAML texts"] += 1
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    data = outcome(load_yaml, path)
    if data is not None:
        assert isinstance(data, dict)
        parses_honestly(TrainConfig, data)


@FUZZ
@given(st.lists(st.one_of(
    st.tuples(st.sampled_from([f.name for f in dataclasses.fields(TrainConfig)] + ["defense_args.beta", "a.b.c", ""]),
              st.text(max_size=12)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=15)), max_size=4))
def test_key_value_overrides(items):
    TRIED["key=value override lists"] += 1
    data = outcome(apply_overrides, {}, items)
    if data is not None:
        parses_honestly(TrainConfig, data)


@FUZZ
@given(config_dicts(EvalConfig))
def test_random_eval_config_dicts(data):
    TRIED["eval-config dicts"] += 1
    parses_honestly(EvalConfig, data)


SPEC_KEYS = ["eps", "alpha", "steps", "restarts", "loss", "start", "norm", "T", "tmode", "kappa", "version", "attacks",
             "queries", "targets", "label", "early_stop", "seed", "x", ""]
SPEC_VALUES = st.sampled_from(["8/255", "-1", "0", "2", "1e9", "nan", "inf", "ce", "dlr", "l2", "linf", "custom",
                               "apgd-ce+apgd-t", "true", "", "[1", "a=b", "0.5"]) | st.text(max_size=6)


@FUZZ
@given(st.one_of(
    st.tuples(st.sampled_from(["pgd", "fgsm", "cw", "temperature-pgd", "autoattack", "tpgd", ""]),
              st.lists(st.tuples(st.sampled_from(SPEC_KEYS), SPEC_VALUES), max_size=4)).map(
        lambda t: t[0] + (":" + ",".join(f"{k}={v}" for k, v in t[1]) if t[1] else "")),
    st.text(max_size=30),
    st.dictionaries(st.sampled_from(["name"] + SPEC_KEYS), values, max_size=4)))
def test_attack_specs(spec):
    TRIED["attack specs"] += 1
    outcome(check_specs, [spec])


CHECKPOINT_HEADS = [b"", b"\x80\x02", b"\x80\x04\x95", b"PK\x03\x04", b"\x80\x02\x8a\x0alZ\xfc\x9cF\xf9 j\xa8P\x19.",
                    b"\x10\x00\x00\x00\x00\x00\x00\x00{\"w\":{\"dtype\":"]


@FUZZ
@given(st.sampled_from(CHECKPOINT_HEADS), st.binary(max_size=600), st.sampled_from([".pt", ".safetensors"]))
def test_checkpoint_bytes(tmp_path_factory, head, body, suffix):
    """Arbitrary bytes (some starting like a pickle, a zip, torch's legacy format or safetensors) as a checkpoint."""
    from rfbench.core.io import load_checkpoint

    TRIED["checkpoint files (random bytes)"] += 1
    path = tmp_path_factory.getbasetemp() / f"fuzz{suffix}"
    path.write_bytes(head + body)
    state = outcome(load_checkpoint, path)
    assert state is None or isinstance(state, dict)


# -- leaderboard entries and tracks ------------------------------------------------------------------
TRACK_DIR = REPO / "leaderboards" / "fashion-mnist-linf"
ENTRY_FILES = sorted(TRACK_DIR.glob("*.json"))
needs_entry = pytest.mark.skipif(not ENTRY_FILES, reason="no leaderboard entry to mutate yet")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A repository root with a copy of the track, its entries and flag files, and the defenses' sources."""
    import shutil

    root = tmp_path_factory.mktemp("board")
    shutil.copytree(TRACK_DIR, root / "leaderboards" / TRACK_DIR.name)
    shutil.copytree(REPO / "defenses", root / "defenses", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def json_paths(obj, prefix=()):
    """Every path (tuple of keys/indices) into a JSON tree, the root excluded."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        yield prefix + (k,)
        yield from json_paths(v, prefix + (k,))


@st.composite
def mutated_entry(draw):
    """A real entry with 1-4 edits: a value replaced (by anything, or nudged as a hand edit would), a key removed or added."""
    import copy
    import json

    data = copy.deepcopy(json.loads(ENTRY_FILES[0].read_text()))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(json_paths(data))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = draw(st.sampled_from(["set", "nudge", "delete", "add", "set"]))
        if op == "nudge" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = parent[key] + draw(st.sampled_from([0.01, -0.01, 1, -1, 1e-12, 0.5]))
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=8))] = draw(values)
        else:
            parent[key] = draw(values | st.sampled_from(["../../etc/passwd", "/etc/passwd", "evil.py:Evil", "https://x"]))
    return data


@needs_entry
@FUZZ
@given(mutated_entry())
def test_mutated_leaderboard_entries(board, data):
    from rfbench.benchmark.leaderboard import check_entry

    TRIED["leaderboard entries (mutated)"] += 1
    path = board / "leaderboards" / TRACK_DIR.name / ENTRY_FILES[0].name
    outcome(lambda: check_entry(data, where=path.name, root=board, entry_path=path))


@needs_entry
@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=200),
                 st.integers(0, 4000).map(lambda n: ENTRY_FILES[0].read_bytes()[:n])))
def test_entry_files_as_bytes(board, raw):
    from rfbench.benchmark.leaderboard.check import check_entry_file

    TRIED["entry files (random and truncated bytes)"] += 1
    path = board / "leaderboards" / TRACK_DIR.name / "fuzz.json"
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    outcome(check_entry_file, path, board)


TRACK_TEXT = (TRACK_DIR / "track.yaml").read_text() if (TRACK_DIR / "track.yaml").exists() else ""


@pytest.mark.skipif(not TRACK_TEXT, reason="no track file")
@FUZZ
@given(st.data())
def test_mutated_track_files(board, data):
    from rfbench.benchmark.leaderboard import load_track

    TRIED["track files (mutated)"] += 1
    lines = TRACK_TEXT.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        j = data.draw(st.integers(0, len(lines) - 1))
        key = lines[j].split(":", 1)[0]
        lines[j] = data.draw(st.sampled_from([
            f"{key}: {data.draw(st.sampled_from(BAD_SCALARS))}",
            f"{key}: {data.draw(scalars.map(repr))}",
            lines[j][: data.draw(st.integers(0, len(lines[j])))],
            "  " + lines[j],
            "",
        ]))
    path = board / "fuzz-tracks" / TRACK_DIR.name / "track.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    outcome(load_track, path)
