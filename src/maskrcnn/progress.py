"""A progress report for loops over images: a live line on a terminal, a line every 10 %
elsewhere (logs stay short)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update(done)` after each step of `total`; `close()` ends the line."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._reported = -1

    def update(self, done: int) -> None:
        elapsed = time.perf_counter() - self.start
        text = f"{self.label}: {done}/{self.total} ({elapsed:.0f} s)"
        if self.live:
            print("\r" + text, end="", file=self.stream, flush=True)
            return
        decile = done * 10 // self.total
        if decile > self._reported:
            self._reported = decile
            print(text, file=self.stream, flush=True)

    def per_batch(self, batch_size: int):
        """A callback(batches done, batches) for loops that report batches, not items."""
        return lambda done, total: self.update(min(done * batch_size, self.total))

    def close(self) -> None:
        if self.live:
            print(file=self.stream, flush=True)
