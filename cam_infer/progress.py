"""A dependency-free progress report on stderr, with rate and ETA: a bar redrawn in place on a terminal; when
stderr is piped or logged, a plain line every `EVERY` seconds of a long run (and one at its end)."""

from __future__ import annotations

import sys
import time

EVERY = 10.0        # seconds between the lines of a piped report: a run of t seconds writes at most t/EVERY + 1


class Progress:
    """``with Progress(total, "explain") as bar: bar.advance(n)``. On a terminal (or ``enabled=True``) a bar
    redrawn at most 10 times a second; piped, a line every `every` seconds, so a short run writes nothing;
    ``enabled=False``: silent."""

    def __init__(self, total: int, label: str, *, stream=None, enabled: bool | None = None,
                 every: float | None = None):
        self.total, self.label, self.done = max(0, total), label, 0
        self.stream = stream or sys.stderr
        self.terminal = True if enabled is True else _isatty(self.stream)
        self.enabled = enabled is not False
        self.every = EVERY if every is None else every
        self.start = time.perf_counter()
        self._drawn = 0.0
        self.lines = 0

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.terminal and (now - self._drawn > 0.1 or self.done == self.total):
            self._drawn = now
            self.stream.write("\r" + self.line(now - self.start))
            self.stream.flush()
        elif not self.terminal and now - max(self._drawn, self.start) >= self.every and self.done < self.total:
            self._write_line(now)

    def _write_line(self, now: float) -> None:
        self._drawn = now
        self.lines += 1
        self.stream.write(self.line(now - self.start) + "\n")
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
        if not self.enabled:
            return
        if self.terminal and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        elif not self.terminal and self.lines:           # a long piped run: say where it ended
            self._write_line(time.perf_counter())


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):            # a closed or bare stream: no terminal
        return False


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet
        return "--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes:02d}:{secs:02d}"
