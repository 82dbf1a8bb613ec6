"""Training augmentation that is deterministic under a seed.

A transform is called as `transform(image, targets, meta, rng) -> (image, targets, meta)`
and takes all its randomness from `rng`, a torch.Generator. The loader seeds that generator
from (base seed, epoch, sample index) with `sample_generator`, so a resumed run, any number
of worker processes, and any batch order see the same augmentation for the same sample.
Resizing is not done here: the model resizes its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskrcnn.structures import Targets

__all__ = [
    "Compose",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "sample_generator",
    "sample_seed",
]


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed from (base_seed, epoch, index), the same in every process."""
    words = [int(v) % 2**64 for v in (base_seed, epoch, index)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)  # [2]
    return (int(state[0]) << 31) ^ int(state[1])


def sample_generator(base_seed: int, epoch: int, index: int) -> torch.Generator:
    """CPU torch.Generator seeded with `sample_seed(base_seed, epoch, index)`."""
    gen = torch.Generator()
    gen.manual_seed(sample_seed(base_seed, epoch, index))
    return gen


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, image: Tensor, targets: Targets, meta: dict, rng: torch.Generator
    ) -> tuple[Tensor, Targets, dict]:
        for transform in self.transforms:
            image, targets, meta = transform(image, targets, meta, rng)
        return image, targets, meta

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class _RandomFlip:
    """Flip image, boxes, masks and meta["crowd_boxes"] together with probability p."""

    horizontal = True

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(
        self, image: Tensor, targets: Targets, meta: dict, rng: torch.Generator
    ) -> tuple[Tensor, Targets, dict]:
        draw = torch.rand((), generator=rng)  # always drawn: later transforms see same stream
        if draw.item() >= self.p:
            return image, targets, meta
        axis = -1 if self.horizontal else -2
        extent = image.shape[axis]
        masks = None if targets.masks is None else targets.masks.flip(axis)
        flipped = Targets(self._flip_boxes(targets.boxes, extent), targets.labels, masks)
        meta = dict(meta)
        if "crowd_boxes" in meta:
            meta["crowd_boxes"] = self._flip_boxes(meta["crowd_boxes"], extent)
        return image.flip(axis), flipped, meta

    def _flip_boxes(self, boxes: Tensor, extent: int) -> Tensor:
        """[N, 4] xyxy -> [N, 4] xyxy mirrored about the image centre line."""
        if self.horizontal:
            order, coords = [2, 1, 0, 3], torch.tensor([True, False, True, False])
        else:
            order, coords = [0, 3, 2, 1], torch.tensor([False, True, False, True])
        swapped = boxes[:, order]  # x1 <-> x2 (or y1 <-> y2) so that x1 <= x2 stays true
        return torch.where(coords.to(boxes.device), extent - swapped, swapped)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomHorizontalFlip(_RandomFlip):
    """Mirror left-right with probability p: x -> W - x for boxes, masks flipped on W."""

    horizontal = True


class RandomVerticalFlip(_RandomFlip):
    """Mirror top-bottom with probability p: y -> H - y for boxes, masks flipped on H."""

    horizontal = False
