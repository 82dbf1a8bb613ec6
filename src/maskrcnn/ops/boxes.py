"""Box utilities. Boxes are xyxy, float, absolute pixels, no "+1" (see structures.py)."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor


def _upcast(t: Tensor) -> Tensor:
    """Widen before multiplying so areas do not overflow/round: half -> float32, ints -> int64."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_area(boxes: Tensor) -> Tensor:
    """Areas of boxes [..., 4] xyxy -> [...]."""
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of boxes1 [N, 4] and boxes2 [M, 4] (xyxy) -> [N, M].

    A pair with zero union (two empty boxes) gives NaN, as torchvision does.
    """
    area1 = box_area(boxes1)  # [N]
    area2 = box_area(boxes2)  # [M]
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = _upcast(bottom_right - top_left).clamp(min=0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp boxes [..., 4] to an image of (height, width): x to [0, w], y to [0, h]."""
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)  # [..., 2]: x1, x2
    y = boxes[..., 1::2].clamp(min=0, max=height)  # [..., 2]: y1, y2
    # [..., 2] x 2 -> [..., 2, 2] (x, y per corner) -> [..., 4] as x1, y1, x2, y2
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (int64 [K]) of boxes [N, 4] whose width and height are both >= min_size."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    keep = (widths >= min_size) & (heights >= min_size)
    return torch.where(keep)[0]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per category `idxs` [N] -> kept indices int64 [K], by score.

    boxes [N, 4] xyxy, scores [N]. Empty inputs give an empty result.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)
