"""A dependency-free progress bar on stderr, with rate and ETA; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "explain") as bar: bar.advance(n)``. Redraws at most 10 times a second."""

    def __init__(self, total: int, label: str, *, stream=None, enabled: bool | None = None):
        self.total, self.label, self.done = max(0, total), label, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self._drawn = 0.0

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        now = time.perf_counter()
        if self.enabled and (now - self._drawn > 0.1 or self.done == self.total):
            self._drawn = now
            self.stream.write("\r" + self.line(now - self.start))
            self.stream.flush()

    def line(self, elapsed: float) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(24 * fraction))
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        return (f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {self.done}/{self.total} "
                f"{elapsed:5.1f}s elapsed, ETA {_clock(eta)}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet
        return "--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes:02d}:{secs:02d}"
