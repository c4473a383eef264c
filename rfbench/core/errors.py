"""User-facing errors.

Every error a user can cause (a bad name, a bad config value, a missing file)
is raised as an :class:`RfbenchError`.  The CLI prints its message on one
line and exits with status 2, so users never see a traceback from deep inside
the library for a mistake of their own.
"""

from __future__ import annotations


class RfbenchError(Exception):
    """An error whose message is meant for the user, on one line; the CLI exits with ``exit_code``.

    A message that embeds text from elsewhere (a YAML problem, a user's key,
    an exception from a library) is folded onto one line here, so the promise
    "one line, never a traceback" holds whatever the message quotes.
    """

    exit_code = 2

    def __init__(self, *args):
        if args and isinstance(args[0], str):
            args = (one_line(args[0]), *args[1:])
        super().__init__(*args)

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(text: str) -> str:
    """``text`` with every line break replaced by a space (runs of blanks kept as they are)."""
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


class UnknownNameError(RfbenchError, KeyError):
    """A registry lookup failed; the message suggests the closest valid names and lists them all."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        import difflib

        self.kind, self.name, self.valid = kind, name, list(valid)
        lower = {v.lower(): v for v in self.valid}
        close = difflib.get_close_matches(str(name), self.valid, n=3) or [
            lower[c] for c in difflib.get_close_matches(str(name).lower(), list(lower), n=3)]
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} '{name}'; valid {kind}s: {', '.join(self.valid) or '(none)'}{hint}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class ConfigError(RfbenchError, ValueError):
    """A config key is unknown, of the wrong type, or out of range."""


class DataNotFoundError(RfbenchError, FileNotFoundError):
    """A dataset is missing; the message says where it was expected and how to get it."""


class CheckpointError(RfbenchError):
    """A checkpoint is corrupt, unsafe, or does not match the model."""


class Interrupted(RfbenchError):
    """Stopped by SIGINT/SIGTERM after saving a resumable state; the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
