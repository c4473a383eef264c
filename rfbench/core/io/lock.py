"""One writer per output directory: an exclusive ``fcntl.flock`` on ``.DIR.rfbench.lock`` beside ``DIR``.

``rfbench train``, ``eval``, ``calibrate``, ``run`` and ``sweep`` hold this lock on
their output directory for the whole command.  A second command on the same
directory stops at once with one line naming the holder (pid, host and command
line, which the holder writes into the lock file); see docs/reliability.md.
The operating system releases a ``flock`` when its process dies, so a lock
left by a ``SIGKILL`` never blocks the rerun that resumes the work.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
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
    """Check that ``path`` can be a writable output directory (creating only its parent), or one line why not."""
    text = os.fspath(path)
    if not text.strip():
        raise RfbenchError(f"{flag} is empty; give a directory")
    out = Path(text).absolute()
    if out.exists() and not out.is_dir():
        raise RfbenchError(f"{flag} {text} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path(out), "a"):
            pass
    except OSError as exc:
        raise RfbenchError(f"{flag} {text}: cannot write there ({exc.strerror or exc})") from None
    return out


@contextlib.contextmanager
def exclusive_dir(path: str | os.PathLike, what: str = "directory", flag: str = "--out",
                  shown: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of directory ``path`` for the ``with`` block (the directory itself is not created).

    ``shown`` names the locked thing in the refusal (default: ``path``).
    """
    out = prepare_out_dir(path, flag)
    lock = lock_path(out)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryLockedError(f"{what} {shown or path} is in use by {_holder(lock)}; wait for it to finish "
                                       f"or use another {flag}") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield Path(path)
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting process)


def _holder(lock: Path) -> str:
    try:
        with open(lock, "rb") as f:
            info = json.loads(f.read(4096).decode("utf-8", "replace"))
        return f"pid {info['pid']} on {info['host']} ({info['command'][:200]})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another rfbench process"
