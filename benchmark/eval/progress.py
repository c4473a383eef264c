"""Progress of an evaluation that a person can follow: which attack runs, images/s, ETA.

Two renderings of the same state (:class:`EvalProgress`):

* on a terminal (stderr is a TTY): a tqdm bar counting **images**, its description
  naming the running attack (``eval [autoattack-standard 4/4]``), with tqdm's rate
  (images/s) and ETA;
* otherwise (a log file, CI, a batch job): one log line every ``every_s`` seconds,
  written by a background timer so a long attack on one batch still reports::

      eval: 512/10000 images (5.1%), attack autoattack-standard (4/4) for 2m10s, 3.9 img/s, ETA 40m32s

  and one line when the evaluation finishes.  ``every_s = 0`` turns the periodic
  lines off.

Images/s is measured over the images finished in this process (a resumed run does
not count the batches it skipped), so the ETA is that of the remaining images at
the rate seen so far.  Everything goes through :mod:`logging` (logger
``rfbench.benchmark.eval.progress``), so ``--quiet`` silences it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_EVERY_S = 30.0


def format_duration(seconds: float | None) -> str:
    """``1h02m03s``, ``4m05s``, ``7s`` (``?`` when unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_rate(r: float | None) -> str:
    """Images per second with 3 significant digits, without an exponent (``0.0123``, ``4.56``, ``6360``)."""
    if not r:
        return "?"
    return f"{r:.0f}" if r >= 100 else f"{r:.3g}"


class EvalProgress:
    """State of the batch loop (images done, running attack) and its rendering.

    ``total`` images, ``done`` of them already finished (a resume); ``attacks`` the
    labels in run order.  The harness calls :meth:`attack` when an attack starts on a
    piece of a batch and :meth:`images_done` when a batch is finished.
    """

    def __init__(self, total: int, done: int, attacks: list[str], *, quiet: bool = False,
                 every_s: float = DEFAULT_EVERY_S, stream: TextIO | None = None, desc: str = "eval"):
        self.total, self.done, self.start_done = int(total), int(done), int(done)
        self.attacks = list(attacks)
        self.desc = desc
        self.current: str | None = None
        self.current_index = 0
        self.current_since = time.monotonic()
        self.t0 = time.monotonic()
        self.every_s = float(every_s)
        self.quiet = quiet
        stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar = None
        if not quiet and self.tty:
            self.bar = tqdm(total=self.total, initial=self.done, desc=desc, unit="img", file=stream, dynamic_ncols=True)
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if not quiet and not self.tty and self.every_s > 0 and self.done < self.total:
            self._timer = threading.Thread(target=self._tick, name="rfbench-eval-progress", daemon=True)
            self._timer.start()

    # -- state -------------------------------------------------------------------
    def rate(self) -> float | None:
        """Images per second finished in this process (None before the first finished batch)."""
        n = self.done - self.start_done
        dt = time.monotonic() - self.t0
        return n / dt if n > 0 and dt > 0 else None

    def eta(self) -> float | None:
        r = self.rate()
        return (self.total - self.done) / r if r else None

    def line(self) -> str:
        """The one-line state (what the periodic log line says)."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{self.desc}: {self.done}/{self.total} images ({pct:.1f}%)"]
        if self.current is not None:
            parts.append(f"attack {self.current} ({self.current_index + 1}/{len(self.attacks)}) for "
                         f"{format_duration(time.monotonic() - self.current_since)}")
        r = self.rate()
        parts.append(f"{format_rate(r)} img/s" if r else "img/s: after the first batch")
        parts.append(f"ETA {format_duration(self.eta())}")
        return ", ".join(parts)

    def attack(self, label: str) -> None:
        """An attack starts (on a piece of the current batch)."""
        if label != self.current:
            self.current = label
            self.current_index = self.attacks.index(label) if label in self.attacks else 0
            self.current_since = time.monotonic()
        if self.bar is not None:
            self.bar.set_description(f"{self.desc} [{label} {self.current_index + 1}/{len(self.attacks)}]")

    def images_done(self, n: int, robust: float | None = None) -> None:
        """``n`` more images are finished (every attack ran on them)."""
        self.done += int(n)
        if self.bar is not None:
            self.bar.update(int(n))
            if robust is not None:
                self.bar.set_postfix(robust=f"{robust:.3f}")

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=1.0)
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet and self.done > self.start_done:
            r = self.rate()
            log.info("%s finished: %d/%d images (%d in this run) in %s, %s img/s", self.desc, self.done, self.total,
                     self.done - self.start_done, format_duration(time.monotonic() - self.t0), format_rate(r))

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            log.info("%s", self.line())

    def __enter__(self) -> "EvalProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
