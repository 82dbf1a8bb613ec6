"""Small pieces of the training loop: its saved state, the logging window, run limits."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .train_config import TrainConfig

__all__ = ["TrainState", "Window", "batch_to_device", "format_val", "resolve_limits"]


@dataclass
class TrainState:
    """Where a run is. Saved in every checkpoint (plain numbers only)."""

    iteration: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next batch
    batch_in_epoch: int = 0  # batches of that epoch already consumed (by this rank)
    elapsed: float = 0.0  # seconds of training, all sessions together
    checkpoint_elapsed: float = 0.0  # `elapsed` at the last checkpoint
    eval_elapsed: float = 0.0  # `elapsed` at the last validation
    skipped_images: int = 0  # unreadable training images met so far

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Window:
    """Running sums of the iterations since the last log record."""

    sums: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    count: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0
    lr: float = 0.0

    def add(self, losses: dict[str, float], lr: float, seconds: float, data_seconds: float
            ) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.last = dict(losses)
        self.count += 1
        self.seconds += seconds
        self.data_seconds += data_seconds
        self.lr = lr

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    def latest(self) -> dict[str, float]:
        return self.means()

    def sec_per_iter(self) -> float:
        return self.seconds / self.count if self.count else math.nan

    def data_sec(self) -> float:
        return self.data_seconds / self.count if self.count else math.nan


def resolve_limits(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, float]:
    """(iteration limit or 0, time budget in seconds or 0) from max_iters, epochs, minutes.

    Raises ValueError when none is set or a value is negative.
    """
    if min(cfg.max_iters, cfg.epochs, cfg.minutes) < 0:
        raise ValueError("max_iters, epochs and minutes must not be negative")
    limits = []
    if cfg.max_iters > 0:
        limits.append(cfg.max_iters)
    if cfg.epochs > 0:
        steps = math.ceil(cfg.epochs * batches_per_epoch / max(cfg.accumulate, 1))
        limits.append(max(steps, 1))
    budget = 60.0 * cfg.minutes
    if not limits and budget <= 0:
        raise ValueError("no run length: give --iters N, --epochs N or --minutes M")
    return (min(limits) if limits else 0), budget


def batch_to_device(images: list[torch.Tensor], targets: list[Any], device: torch.device
                    ) -> tuple[list[torch.Tensor], list[Any]]:
    non_blocking = device.type == "cuda"
    return ([im.to(device, non_blocking=non_blocking) for im in images],
            [t.to(device) for t in targets])


def format_val(iteration: int, metrics: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(metrics.jsonl record, one printed line) of a validation."""
    record: dict[str, Any] = {"kind": "val", "iter": iteration}
    parts = []
    for iou_type, label in (("bbox", "box"), ("segm", "mask")):
        if iou_type in metrics:
            for name, value in metrics[iou_type].items():
                record[f"{iou_type}/{name}"] = value
            m = metrics[iou_type]
            parts.append(f"{label} AP {100 * m['AP']:.1f} AP50 {100 * m['AP50']:.1f}")
    for name, value in metrics.get("loss", {}).items():
        record[f"val_{name}"] = value
    if "loss" in metrics.get("loss", {}):
        parts.append(f"loss {metrics['loss']['loss']:.3f}")
    record["eval_sec"] = metrics.get("seconds", 0.0)
    line = f"validation at iter {iteration}: " + " | ".join(parts)
    line += f" ({metrics.get('seconds', 0.0):.0f} s)"
    return record, line
