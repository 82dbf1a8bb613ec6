"""Datasets as training and evaluation use them: checked files, skipped unreadable images.

`SafeDataset` wraps a CocoDataset (optionally a subset of it). An image that fails to load
(missing, truncated, wrong size) does not crash a worker process: the item comes back as
(None, None, meta) with meta["error"] naming the file, and the training or evaluation loop
drops it with a warning.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data.coco import CocoDataset
from ..data.images import ImageError
from ..data.transforms import Compose, RandomHorizontalFlip

__all__ = ["SafeDataset", "load_eval_dataset", "load_train_dataset", "warn"]


def warn(message: str) -> None:
    print(f"maskrcnn: warning: {message}", file=sys.stderr, flush=True)


class SafeDataset(Dataset):
    """Items `indices[i]` of `dataset` via its `get(index, rng)`; load errors become
    (None, None, {"image_id", "file_name", "error"}) instead of exceptions."""

    def __init__(self, dataset: CocoDataset, indices: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, Any, dict[str, Any]]:
        return self.get(index)

    def get(self, index: int, rng: torch.Generator | None = None) -> tuple[Any, Any, dict]:
        real = self.indices[index]
        try:
            return self.dataset.get(real, rng=rng)
        except (ImageError, OSError) as err:
            entry = self.dataset.entries[real]
            return None, None, {
                "image_id": entry.image_id,
                "file_name": entry.file_name,
                "error": str(err).splitlines()[0],
            }


def _open(json_path: str | os.PathLike, images_dir: str | os.PathLike, **kwargs: Any):
    return CocoDataset(json_path, images_dir, **kwargs)


def load_train_dataset(
    json_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    hflip: float = 0.5,
    keep_empty: bool = True,
    check_images: bool = True,
    verbose: bool = True,
) -> tuple[CocoDataset, SafeDataset]:
    """The training set with flip augmentation, minus images whose files cannot be opened.

    Returns (the CocoDataset, the SafeDataset over its usable images). Raises DatasetError
    when no image can be read or no annotation is usable (e.g. all lack segmentation).
    """
    from ..data.coco_records import DatasetError

    transforms = Compose([RandomHorizontalFlip(hflip)]) if hflip > 0 else None
    dataset = _open(json_path, images_dir, transforms=transforms, keep_empty=keep_empty)
    if verbose:
        print(f"train: {dataset.summary()}", flush=True)
    indices = list(range(len(dataset)))
    if check_images:
        problems = dataset.check_files()
        if problems:
            bad = {path for path, _ in problems}
            indices = [i for i in indices
                       if str(dataset.images_dir / dataset.entries[i].file_name) not in bad]
            if verbose:
                warn(f"skipping {len(problems)} training image(s) that cannot be read "
                     f"(first: {problems[0][1]})")
    if not indices:
        raise DatasetError(f"{json_path}: none of the {len(dataset)} images can be read")
    if sum(len(dataset.entries[i].labels) for i in indices) == 0:
        raise DatasetError(f"{json_path}: no usable annotation to train on "
                           f"({dataset.summary()})")
    return dataset, SafeDataset(dataset, indices)


def load_eval_dataset(
    json_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    masks: bool = True,
    verbose: bool = True,
    name: str = "val",
) -> tuple[CocoDataset, SafeDataset]:
    """Every image of an evaluation set (unreadable ones are reported when met: their
    objects count as misses). masks=False reads boxes only (enough for predictions)."""
    dataset = _open(json_path, images_dir, keep_empty=True, masks=masks)
    if verbose:
        print(f"{name}: {dataset.summary()}", flush=True)
    return dataset, SafeDataset(dataset)
