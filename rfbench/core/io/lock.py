"""One writer per output directory: an exclusive ``fcntl.flock`` on ``.DIR.rfbench.lock`` beside ``DIR``.

``DIR`` is resolved first (every symbolic link in it followed), so two commands
that reach one directory by different paths take the same lock.  The lock file
itself is opened with ``O_NOFOLLOW``: a symbolic link planted in its place is
refused in one line, never followed (it would let the lock's JSON overwrite the
file it points to).

``rfbench train``, ``eval``, ``calibrate``, ``run`` and ``sweep`` hold this lock on
their output directory for the whole command.  A second command on the same
directory stops at once with one line naming the holder (pid, host and command
line, which the holder writes into the lock file); see docs/reliability.md.
The operating system releases a ``flock`` when its process dies, so a lock
left by a ``SIGKILL`` never blocks the rerun that resumes the work.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rfbench.core.errors import RfbenchError


class DirectoryLockedError(RfbenchError):
    """Another rfbench process is writing into the directory."""


@contextlib.contextmanager
def exclusive_leaderboard(root: Path) -> Iterator[Path]:
    """One writer per leaderboard: ``leaderboard submit`` and ``build`` hold ``leaderboards/._writer.rfbench.lock``."""
    with exclusive_dir(Path(root) / "leaderboards" / "_writer", "leaderboard", "--root", shown=str(root)):
        yield Path(root)


def lock_path(out: Path) -> Path:
    """The lock file of directory ``out``: ``.<name>.rfbench.lock`` beside it, so locking creates nothing inside."""
    return out.parent / f".{out.name}.rfbench.lock"


def prepare_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check that ``path`` can be a writable output directory (creating only its parent), or one line why not.

    Returns the *resolved* directory (symbolic links followed), whose lock file every writer takes.
    """
    text = os.fspath(path)
    if not text.strip():
        raise RfbenchError(f"{flag} is empty; give a directory")
    try:
        out = Path(text).resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise RfbenchError(f"{flag} {text}: cannot resolve it ({getattr(exc, 'strerror', None) or exc})") from None
    if out.exists() and not out.is_dir():
        raise RfbenchError(f"{flag} {text} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RfbenchError(f"{flag} {text}: cannot write there ({exc.strerror or exc})") from None
    os.close(_open_lock(out, flag, text))
    return out


def _open_lock(out: Path, flag: str, text: str) -> int:
    """A descriptor of ``out``'s lock file, opened without following a link; a link or a non-file is one line."""
    lock = lock_path(out)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RfbenchError(f"{flag} {text}: its lock file {lock} is a symbolic link, and rfbench never follows "
                               "one there (it would overwrite the file it points to); remove the link") from None
        raise RfbenchError(f"{flag} {text}: cannot write there ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RfbenchError(f"{flag} {text}: its lock file {lock} is not a regular file; remove it")
    return fd


@contextlib.contextmanager
def exclusive_dir(path: str | os.PathLike, what: str = "directory", flag: str = "--out",
                  shown: str | None = None, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the exclusive lock of directory ``path`` for the ``with`` block (the directory itself is not created).

    ``shown`` names the locked thing in the refusal (default: ``path``).  ``wait_s``:
    how long to wait for a holder to finish before refusing (default: refuse at once).
    """
    out = prepare_out_dir(path, flag)
    lock = lock_path(out)
    fd = _open_lock(out, flag, os.fspath(path))
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DirectoryLockedError(f"{what} {shown or path} is in use by {_holder(lock)}; wait for it "
                                               f"to finish or use another {flag}") from None
                time.sleep(0.05)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield Path(path)
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting process)


def _holder(lock: Path) -> str:
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        info = json.loads(data.decode("utf-8", "replace"))
        return f"pid {info['pid']} on {info['host']} ({info['command'][:200]})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another rfbench process"
