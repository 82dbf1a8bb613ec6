"""Training checkpoints: written atomically, the last few kept, the newest usable one found.

A checkpoint is a model file of `io.weights` (format, version, config, model; loadable by
`load_model` and `maskrcnn predict`) with one more entry, "trainer": iteration, optimizer
and grad-scaler state, data position (epoch, batch within the epoch), elapsed training time
and the random number generator states of every rank.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io.weights import CHECKPOINT_FORMAT, WeightsError, read_weight_file, save_model

__all__ = ["CheckpointManager", "capture_rng_state", "restore_rng_state"]

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), Python and numpy generator states, as plain
    types and tensors (readable with torch.load(weights_only=True))."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `capture_rng_state` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((
        "MT19937",
        np_state["keys"].numpy().astype(np.uint32),
        np_state["pos"],
        np_state["has_gauss"],
        np_state["cached_gaussian"],
    ))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _warn(message: str) -> None:
    print(f"maskrcnn: warning: {message}", file=sys.stderr, flush=True)


class CheckpointManager:
    """RUN/checkpoints/ckpt_<iteration>.pt files; keeps the newest `keep`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = max(int(keep), 1)

    def path_for(self, iteration: int) -> Path:
        return self.directory / f"ckpt_{iteration:07d}.pt"

    def list(self) -> list[tuple[int, Path]]:
        """(iteration, path) of the checkpoint files, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def save(self, model: nn.Module, trainer_state: dict[str, Any]) -> Path:
        """Write the checkpoint of trainer_state["iteration"] atomically; prune old ones."""
        path = self.path_for(int(trainer_state["iteration"]))
        if self.directory.is_dir():  # temporary files of a writer that was killed
            for stale in self.directory.glob(".ckpt_*"):
                stale.unlink(missing_ok=True)
        save_model(model, path, trainer=trainer_state)
        for _, old in self.list()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(
        self, check: Callable[[dict[str, Any]], None] | None = None
    ) -> tuple[Path, dict[str, Any]] | None:
        """Newest readable checkpoint as (path, contents), or None if there is none.

        A checkpoint that cannot be read (truncated, corrupted, not ours) or that `check`
        rejects (by raising ValueError / RuntimeError / KeyError) is reported on stderr
        and the one before it is tried. Raises WeightsError when files exist but none works.
        """
        candidates = self.list()
        problems = []
        for _iteration, path in reversed(candidates):
            try:
                data = read_weight_file(path)
                if data.get("format") != CHECKPOINT_FORMAT or "trainer" not in data:
                    raise WeightsError(f"{path}: not a maskrcnn training checkpoint")
                if check is not None:
                    check(data)
            except (WeightsError, ValueError, RuntimeError, KeyError, TypeError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                problems.append(reason)
                _warn(f"cannot resume from {path.name}: {reason}; trying the previous one")
                continue
            if problems:
                _warn(f"resuming from {path} (skipped {len(problems)} unusable newer "
                      "checkpoint(s))")
            return path, data
        if candidates:
            raise WeightsError(
                f"{self.directory}: none of the {len(candidates)} checkpoints is usable "
                f"(newest: {problems[0]})"
            )
        return None
