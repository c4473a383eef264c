"""File I/O: atomic writes and safe checkpoint loading."""

from rfbench.core.io.atomic import (
                                 atomic_write,
                                 atomic_write_bytes,
                                 atomic_write_json,
                                 atomic_write_text,
                                 read_json,
                                 remove_stale_temps,
)
from rfbench.core.io.checkpoint import load_checkpoint, load_state_dict_into, save_checkpoint

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "remove_stale_temps",
    "load_checkpoint",
    "load_state_dict_into",
    "save_checkpoint",
]
