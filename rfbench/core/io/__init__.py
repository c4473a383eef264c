"""File I/O: atomic writes and safe checkpoint loading.

The checkpoint functions need torch; they load on first use, so that importing the
atomic writers (as every command-line parser does) stays fast.
"""

from typing import Any

from rfbench.core.io.atomic import (
                                 atomic_write,
                                 atomic_write_bytes,
                                 atomic_write_json,
                                 atomic_write_text,
                                 read_json,
                                 remove_stale_temps,
)

_CHECKPOINT = ("load_checkpoint", "load_state_dict_into", "save_checkpoint")

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "remove_stale_temps",
    *_CHECKPOINT,
]


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT:
        from rfbench.core.io import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
