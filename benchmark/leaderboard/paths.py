"""Paths named inside leaderboard entries: repository-relative, and never outside the repository.

An entry is untrusted data from a pull request.  Any path in it must be a
plain relative path (no ``..`` component, not absolute, no drive or
backslash tricks) and must still be inside the repository once symbolic
links are resolved.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class UnsafePathError(ValueError):
    """A path in an entry is absolute or leaves the repository."""


def safe_repo_path(text: str, root: Path, what: str) -> Path:
    """``root / text`` if ``text`` is a safe repository-relative path; :class:`UnsafePathError` otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise UnsafePathError(f"{what} must be a non-empty relative path")
    if "\\" in text or "\x00" in text:
        raise UnsafePathError(f"{what} '{text}' must use '/' separators and no control characters")
    pure = PurePosixPath(text)
    if pure.is_absolute() or text.startswith("~") or (len(text) > 1 and text[1] == ":"):
        raise UnsafePathError(f"{what} '{text}' is an absolute path; give a path relative to the repository root")
    if ".." in pure.parts:
        raise UnsafePathError(f"{what} '{text}' escapes the repository ('..' is not allowed)")
    root_resolved = root.resolve()
    full = (root / pure).resolve()
    if not full.is_relative_to(root_resolved):
        raise UnsafePathError(f"{what} '{text}' resolves outside the repository (through a symbolic link)")
    return full


def is_url(text: str) -> bool:
    return text.startswith("https://")
