"""Data passed between the parts of the model.

Coordinates everywhere inside: boxes xyxy, float, absolute pixels of the network input
(the resized image), no "+1". Labels are contiguous, 0 is background.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

MASK_THRESHOLD = 0.5  # default of RoIHeadsConfig.mask_threshold


def binarize_masks(masks: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """Soft masks -> bool: foreground where prob > threshold, the one rule everywhere (the
    model's pasting, COCO results, drawings), torchvision's. Bool/uint8 masks pass as bool."""
    return masks > threshold if masks.is_floating_point() else masks.bool()


@dataclass
class ImageList:
    """A batch of images padded to one size.

    tensors: [B, C, H, W], zero padded at the bottom and right.
    image_sizes: (height, width) of each image before padding.
    """

    tensors: Tensor
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_sizes)


@dataclass
class Targets:
    """Ground truth of one image.

    boxes: [G, 4] float xyxy.  labels: [G] int64 in 1..num_classes-1.
    masks: [G, H, W] uint8 or bool full-image masks, or None (box-only training).
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor | None = None

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to(self, device: torch.device | str) -> Targets:
        masks = None if self.masks is None else self.masks.to(device)
        return Targets(self.boxes.to(device), self.labels.to(device), masks)


@dataclass
class Detections:
    """Detections of one image.

    boxes: [D, 4] float xyxy.  scores: [D] float.  labels: [D] int64 (contiguous, >= 1).
    masks: [D, H, W] bool (thresholded) or float in [0, 1] (soft), or None before the mask
    head has run.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to(self, device: torch.device | str) -> Detections:
        masks = None if self.masks is None else self.masks.to(device)
        return Detections(
            self.boxes.to(device), self.scores.to(device), self.labels.to(device), masks
        )

    @staticmethod
    def empty(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Detections:
        return Detections(
            boxes=torch.zeros((0, 4), dtype=dtype, device=device),
            scores=torch.zeros((0,), dtype=dtype, device=device),
            labels=torch.zeros((0,), dtype=torch.int64, device=device),
        )
