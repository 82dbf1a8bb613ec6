"""What a training run reports: a progress line, RUN/metrics.jsonl and TensorBoard.

Only rank 0 writes (the trainer creates these objects with enabled=False elsewhere).
Progress is plain text: on a terminal one line is rewritten in place every iteration and
kept every `log_period` iterations; otherwise a line is printed every `log_period`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..io.atomic import atomic_write

__all__ = ["MetricsWriter", "ProgressPrinter", "format_seconds", "read_metrics"]

_SHORT_NAMES = {
    "loss_rpn_objectness": "rpn_obj",
    "loss_rpn_box": "rpn_box",
    "loss_cls": "cls",
    "loss_box": "box",
    "loss_mask": "mask",
}


def format_seconds(seconds: float) -> str:
    """1234.5 -> '0:20:34'."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line is ignored)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsWriter:
    """Appends JSON records to RUN/metrics.jsonl and scalars to TensorBoard if installed."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb: Any = None
        self.status = f"metrics in {self.path}"
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
                self.status += f"; TensorBoard logs in {Path(run_dir) / 'tensorboard'}"
            except Exception:  # tensorboard is optional (ImportError, or a broken install)
                self._tb = None
                self.status += ("; no TensorBoard logs (not installed: "
                                "pip install 'maskrcnn[tensorboard]')")

    def truncate_after(self, iteration: int) -> None:
        """Drop records of iterations after `iteration` (a resumed run redoes them)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("iter", 0)) <= iteration]
        atomic_write(self.path, lambda f: f.writelines(json.dumps(r) + "\n" for r in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        """One JSON line (flushed), and every number in it to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(record)) + "\n")
        if self._tb is not None:
            step = int(record.get("iter", 0))
            prefix = "val/" if record.get("kind") == "val" else "train/"
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("iter", "kind"):
                    self._tb.add_scalar(prefix + key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ProgressPrinter:
    """`iter 120/1000 [12%] loss 1.234 (rpn_obj .. mask ..) lr 0.02 1.2 s/it eta 0:18:02`."""

    def __init__(
        self, enabled: bool = True, log_period: int = 20, stream: TextIO | None = None
    ) -> None:
        self.enabled = enabled
        self.log_period = max(int(log_period), 1)
        self.stream = stream if stream is not None else sys.stdout
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._width = 0
        self._last_print = 0.0

    def update(self, iteration: int, total: int | None, losses: Mapping[str, float],
               lr: float, sec_per_iter: float, eta: float) -> None:
        """Show the state after `iteration` iterations (losses: running averages)."""
        if not self.enabled:
            return
        keep = iteration % self.log_period == 0
        if not keep and not self.live:
            return
        now = time.monotonic()
        if not keep and now - self._last_print < 0.2:
            return  # a terminal does not need more than 5 updates a second
        self._last_print = now
        line = self.format(iteration, total, losses, lr, sec_per_iter, eta)
        if self.live:
            pad = " " * max(self._width - len(line), 0)
            self.stream.write("\r" + line + pad + ("\n" if keep else ""))
            self._width = 0 if keep else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (ends a live progress line first)."""
        if not self.enabled:
            return
        if self.live and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    @staticmethod
    def format(iteration: int, total: int | None, losses: Mapping[str, float], lr: float,
               sec_per_iter: float, eta: float) -> str:
        if total:
            head = f"iter {iteration}/{total} [{100.0 * iteration / total:3.0f}%]"
        else:
            head = f"iter {iteration}"
        parts = " ".join(
            f"{_SHORT_NAMES.get(k, k)} {v:.3f}" for k, v in losses.items() if k != "loss"
        )
        return (
            f"{head} loss {losses.get('loss', float('nan')):.3f} ({parts}) lr {lr:.4g} "
            f"{sec_per_iter:.2f} s/it eta {format_seconds(eta)}"
        )
