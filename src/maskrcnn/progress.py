"""A progress report for loops over images: a tqdm bar on a terminal, a plain line every
10 % elsewhere (logs, pipes and captured output stay short and free of carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """`update(done)` after each step of `total`; `close()` ends the bar.

    On a terminal (`stream.isatty()`) it is a tqdm bar; otherwise it prints
    `label: done/total (N s)` when `done` first reaches each tenth of `total`.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 unit: str = "img") -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._reported = -1
        self._bar: Any = None
        if self.live:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=label, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=True)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(max(done - self._bar.n, 0))
            return
        decile = done * 10 // self.total
        if decile > self._reported:
            self._reported = decile
            elapsed = time.perf_counter() - self.start
            print(f"{self.label}: {done}/{self.total} ({elapsed:.0f} s)", file=self.stream,
                  flush=True)

    def per_batch(self, batch_size: int):
        """A callback(batches done, batches) for loops that report batches, not items."""
        return lambda done, total: self.update(min(done * batch_size, self.total))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
