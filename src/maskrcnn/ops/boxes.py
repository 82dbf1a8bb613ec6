"""Box utilities. Boxes are xyxy, float, absolute pixels, no "+1" (see structures.py)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch
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


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's NMS (its compiled operator): indices (int64 [K]) of the boxes [N, 4]
    kept, by decreasing score; a box is dropped when its IoU with a kept one is > the
    threshold. Under autocast, or with boxes and scores of different float types, both
    are taken in float32 first, as torchvision's autocast rule for nms does (its Python
    package registers that rule; the operator alone refuses mixed types)."""
    _load_torchvision_ops()
    mixed = boxes.dtype != scores.dtype or torch.is_autocast_enabled(boxes.device.type)
    if mixed:
        boxes, scores = _float32(boxes), _float32(scores)
    return torch.ops.torchvision.nms(boxes, scores, iou_threshold)


def _float32(t: Tensor) -> Tensor:
    """Floating tensors but float64 in float32 (autocast's cast for nms)."""
    return t.float() if t.is_floating_point() and t.dtype != torch.float64 else t


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per category `idxs` [N] -> kept indices int64 [K], by score.

    boxes [N, 4] xyxy, scores [N]. Empty inputs give an empty result. The same two routes
    as torchvision.ops.batched_nms, chosen by the same size rule, so that the result is
    torchvision's to the bit: one NMS over boxes shifted apart per category, or (many
    boxes, not tracing) one NMS per category.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    many = boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000)
    if many and not torch.jit.is_tracing():
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for category in torch.unique(idxs):
            members = torch.where(idxs == category)[0]
            keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
        kept = torch.where(keep_mask)[0]
        return kept[scores[kept].sort(descending=True)[1]]
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))  # [N]
    return nms(boxes + offsets[:, None], scores, iou_threshold)


_torchvision_ops_loaded = False


def _load_torchvision_ops() -> None:
    """Make torch.ops.torchvision.* available. Importing torchvision does it, but its
    Python package costs ~160 MiB of resident memory that inference does not need, so
    its compiled library is loaded alone (a second load, if torchvision is imported later,
    is a no-op). torch.compile needs the package's fake-tensor kernels: imported then."""
    global _torchvision_ops_loaded
    if _torchvision_ops_loaded or "torchvision" in sys.modules:
        return
    if not torch.compiler.is_compiling():
        spec = importlib.util.find_spec("torchvision")
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            for name in ("_C_stable", "_C"):  # torchvision >= 0.25 / older
                for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                    library = Path(folder) / f"{name}{suffix}"
                    if library.is_file():
                        torch.ops.load_library(str(library))
                        _torchvision_ops_loaded = True
                        return
    import torchvision  # noqa: F401  (its own loader, and its error if it has none)
