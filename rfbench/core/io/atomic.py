"""Atomic file writes: temporary file in the same directory, flush, fsync, rename.

A reader never sees a half-written file, and when a write fails (disk full,
a kill) the previous file at that path is left intact.  The file gets the
mode a plain ``open(path, "w")`` would give it (``0o666`` less the umask),
not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from rfbench.core.errors import RfbenchError

# mkstemp's names: ".<target>.<8 random characters>.tmp" (see atomic_write)
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``ENOSPC`` (disk full) is re-raised as a one-line :class:`RfbenchError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise RfbenchError(f"disk full while writing {path}; the previous version of that file is intact") from exc
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the renames in directory ``path`` durable, where the OS allows it (errors are ignored)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells (Linux), else by setting it back at once."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``directory``; returns them.

    A SIGKILL during :func:`atomic_write` leaves its temporary file behind (the
    target is untouched).  Call this only where no other process is writing
    into ``directory`` at the same time, e.g. when a run resumes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if _TEMP_NAME.match(p.name) and p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON (NaN/Inf become null, arrays become lists) and write atomically."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=indent, sort_keys=False) + "\n")


#: the largest text or JSON file rfbench reads (results, entries, summaries are far smaller)
MAX_TEXT_BYTES = 64 * 1024 * 1024


def read_text_bounded(path: str | os.PathLike, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a *regular* file of at most ``limit`` bytes, else a one-line :class:`RfbenchError`.

    A directory, a FIFO or a device (``/dev/zero``) is refused before it is opened
    for reading, so nothing is read without bound and nothing blocks.
    """
    import stat

    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RfbenchError(f"file not found: {path}") from None
    except OSError as exc:
        raise RfbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise RfbenchError(f"cannot read {path}: {kind}")
    if st.st_size > limit:
        raise RfbenchError(f"{path} is {st.st_size} bytes, more than the {limit} bytes rfbench reads from such a file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise RfbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise RfbenchError(f"{path} is more than the {limit} bytes rfbench reads from such a file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RfbenchError(f"corrupt file {path}: not UTF-8 text ({exc})") from None


def loads_json_bounded(text: str, where: str, **kw: Any) -> Any:
    """``json.loads``, with nesting too deep for the parser (a RecursionError) as a one-line error."""
    try:
        return json.loads(text, **kw)
    except RecursionError:
        raise RfbenchError(f"corrupt file {where}: JSON nested too deeply") from None


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (regular, bounded size and depth); a missing or malformed file is a one-line :class:`RfbenchError`."""
    path = Path(path)
    text = read_text_bounded(path)
    try:
        return loads_json_bounded(text, str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RfbenchError(f"corrupt file {path}: not valid JSON ({exc})") from None
