"""The evidence behind an entry: its per-sample flag file, read within bounds, on exactly the track's test images.

An entry ranks only on evidence (``docs/leaderboard-threat-model.md``):

* :func:`read_flags` opens a flag file from an untrusted pull request.  Before
  anything is decompressed or allocated it reads the zip directory and every
  member's ``.npy`` header, and requires the declared shapes to be those of the
  track's test subset (``N`` images, ``A`` attacks), the dtypes to be plain
  integers, booleans, floats and text, and each member's declared uncompressed
  size to be what that shape takes.  ``zipfile`` never inflates a member past
  its declared size, so memory is bounded by the track's test size.
* :func:`expected_subset` recomputes which test images the track evaluates: the
  positions :func:`rfbench.benchmark.data.subsets.per_class_indices` picks
  (``eval.n_per_class`` per class, ``eval.subset_seed``) on the dataset's test
  split, with the dataset's own labels and class names.  When the dataset is not
  available on this machine that is :class:`DatasetUnavailable`, and the entry is
  listed as unverified instead.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.leaderboard.schema import Track
from rfbench.core.errors import RfbenchError

#: members a flag file must have (``success`` is derived and optional)
REQUIRED = ("index", "y", "labels", "clean_pred", "adv_pred", "ran", "pert", "done", "meta")
OPTIONAL = ("success",)
#: dtype kinds per member: i/u integers, b booleans, f floats, U text
KINDS = {"index": "iu", "y": "iu", "clean_pred": "iu", "adv_pred": "iu", "ran": "b", "success": "b", "pert": "f",
         "done": "b", "labels": "U", "meta": "U"}
MAX_LABEL_CHARS = 1000  # an attack label
MAX_META_CHARS = 1 << 20  # the meta JSON text
HEADER_SLACK = 4096  # the .npy magic and header


class FlagFileError(RfbenchError):
    """A flag file is not the per-sample evidence of the track's test subset."""


class DatasetUnavailable(RfbenchError):
    """The track's dataset is not on this machine, so the evaluated images cannot be verified here."""


def _shapes(n: int, a: int) -> dict[str, tuple[int, ...]]:
    return {"index": (n,), "y": (n,), "clean_pred": (n,), "done": (n,), "adv_pred": (n, a), "ran": (n, a),
            "success": (n, a), "pert": (n, a), "labels": (a,), "meta": ()}


@dataclass(frozen=True)
class Member:
    """What a flag file's member declares: its ``.npy`` shape and dtype, and its uncompressed size in the zip."""

    shape: tuple[int, ...]
    dtype: np.dtype
    file_size: int


def read_headers(path: Path) -> dict[str, Member]:
    """Every member's ``.npy`` header of the flag file ``path``; reads only the zip directory and the headers.

    :class:`FlagFileError` when it is not a regular file, not a zip of ``.npy`` arrays, or lacks a member.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise FlagFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise FlagFileError(f"{path} is not a regular file")
    out: dict[str, Member] = {}
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename.removesuffix(".npy"): i for i in z.infolist()}
            unknown = sorted(set(infos) - set(REQUIRED) - set(OPTIONAL))
            if unknown:
                raise FlagFileError(f"{path.name} has unexpected members {', '.join(unknown[:5])!r}")
            missing = [m for m in REQUIRED if m not in infos]
            if missing:
                raise FlagFileError(f"{path.name} lacks the arrays {', '.join(missing)}")
            for name, info in infos.items():
                with z.open(info) as fp:
                    version = np.lib.format.read_magic(fp)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(fp, max_header_size=HEADER_SLACK)
                out[name] = Member(shape=tuple(shape), dtype=dtype, file_size=info.file_size)
    except FlagFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise FlagFileError(f"corrupt flag file {path.name}: {exc}") from None
    return out


def check_headers(headers: dict[str, Member], name_of_file: str, n: int, a: int) -> None:
    """:class:`FlagFileError` unless every member has the shape of ``n`` images and ``a`` attacks, a plain dtype,
    and a declared size that its shape accounts for (so nothing inflates beyond it)."""
    shapes = _shapes(n, a)
    for name, m in headers.items():
        if m.dtype.kind not in KINDS[name] or m.dtype.hasobject:
            raise FlagFileError(f"{name_of_file}: '{name}' has dtype {m.dtype}, expected kind {KINDS[name]}")
        if m.shape != shapes[name]:
            raise FlagFileError(f"{name_of_file}: '{name}' has shape {m.shape}, but the track evaluates "
                                f"{n} images with {a} attacks, so it must be {shapes[name]}")
        limit = {"labels": MAX_LABEL_CHARS, "meta": MAX_META_CHARS}.get(name)
        if limit is not None and m.dtype.itemsize > 4 * limit:
            raise FlagFileError(f"{name_of_file}: '{name}' holds text longer than {limit} characters")
        size = int(np.prod(m.shape, dtype=np.int64)) * m.dtype.itemsize
        if m.file_size > size + HEADER_SLACK:
            raise FlagFileError(f"{name_of_file}: '{name}' inflates to {m.file_size} bytes, more than its "
                                f"shape {m.shape} of {m.dtype} takes")


def load_checked(path: Path) -> SampleFlags:
    """Read a flag file whose headers :func:`check_headers` admitted."""
    try:
        return SampleFlags.load(path)
    except RfbenchError as exc:
        raise FlagFileError(str(exc)) from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:  # a CRC or stream error while reading
        raise FlagFileError(f"corrupt flag file {path.name}: {type(exc).__name__}: {exc}") from None


def read_flags(path: Path, n: int, a: int) -> SampleFlags:
    """The flags of ``path`` if it holds ``n`` images and ``a`` attacks (:class:`FlagFileError` otherwise),
    checked before anything is decompressed or allocated."""
    check_headers(read_headers(path), path.name, n, a)
    return load_checked(path)


# -- the track's test subset -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpectedSubset:
    """The test images a track evaluates: positions in the test split, their labels, and the dataset's class names."""

    index: np.ndarray  # (N,) sorted positions
    y: np.ndarray  # (N,) labels at those positions
    classes: tuple[str, ...]


def expected_subset(track: Track) -> ExpectedSubset:
    """What :func:`rfbench.benchmark.eval.harness.select_subset` picks for ``track`` (dataset read locally, never fetched)."""
    ev = track.run.eval or {}
    train = track.run.train or {}
    n = ev.get("n_per_class", track.info.protocol.n_per_class)
    key = (str(train.get("dataset", track.info.protocol.dataset)), train.get("data_root"), int(n) if n else None,
           int(ev.get("subset_seed", 0)))
    if key not in _CACHE:  # a missing dataset is looked for once per process, not once per entry
        try:
            _CACHE[key] = _expected(*key)
        except DatasetUnavailable as exc:
            _CACHE[key] = exc
    found = _CACHE[key]
    if isinstance(found, DatasetUnavailable):
        raise found
    return found


_CACHE: dict[tuple, ExpectedSubset | DatasetUnavailable] = {}


def _expected(dataset: str, root: str | None, n_per_class: int | None, seed: int) -> ExpectedSubset:
    import torch

    from rfbench.benchmark.data.registry import DataOptions, load_raw, parse_dataset_name
    from rfbench.benchmark.data.subsets import per_class_indices

    base, _ = parse_dataset_name(dataset)
    try:
        test = load_raw(base, DataOptions(root=root, download=False, test_only=True)).test
    except RfbenchError as exc:
        raise DatasetUnavailable(f"dataset {dataset} is not available here ({str(exc).splitlines()[0][:200]})") from None
    y = torch.as_tensor(test.y).cpu()
    index = per_class_indices(y, test.num_classes, n_per_class, seed) if n_per_class else torch.arange(len(y))
    return ExpectedSubset(index=index.numpy().astype(np.int64), y=y[index].numpy().astype(np.int64),
                          classes=tuple(test.classes))
