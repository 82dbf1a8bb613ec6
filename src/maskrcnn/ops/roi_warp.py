"""RoIWarp (Dai et al., MNC 2016), the middle row of the Mask R-CNN paper's Table 2c/2d.

The paper: RoIWarp "quantizes the RoI but then bilinearly resamples" (Sec. 3; unlike
RoIAlign it overlooks the alignment). We read that as exactly two steps:

1. Quantise as RoIPool does (ops/roi_pool.py, torchvision.ops.roi_pool): each corner becomes
   an integer feature pixel, ``x1q = round(x1 * spatial_scale)`` (halves away from zero, C's
   ``round``), likewise y1q, x2q, y2q. RoIPool's RoI is the pixels x1q..x2q *inclusive*, of
   width ``w = max(x2q - x1q + 1, 1)`` (its "+1"), bins ``[floor(i w / m), ceil((i+1) w / m))``
   of those pixel indices: as a continuous interval, ``[x1q, x1q + w)``.
2. Sample that same extent as legacy RoIAlign does (aligned=False, no half-pixel offset:
   coordinate j reads pixel j): m x m bins of ``w / m``, ``sampling_ratio`` points per bin and
   axis at ``x1q + p w / m + (i + 0.5) w / (m g)`` (adaptive: ``g = ceil(w / m)``), each read
   by bilinear interpolation of its four neighbours, then their average ("avg", the
   ``roi_warp`` pooler) or maximum ("max", ``roi_warp_max``; the paper's Table 2d rows).

So ``roi_warp(x, boxes, m, s, g) == roi_align(x, [x1q, y1q, x2q + 1, y2q + 1], m, 1.0, g,
aligned=False)``: it is computed that way, on our RoIAlign machinery (the sparse product of
ops/roi_align.py, all levels at once), with the quantised boxes in feature pixels and scale 1
(so any spatial scale is exact). RoIAlign's own 1-pixel minimum is RoIPool's ``max(., 1)``.

MNC's released Caffe layer differs in details the paper does not describe (one sample per
bin at the bin's corner, the forward width without the +1 that its backward has); we follow
the paper's description with RoIAlign's sampling, so the three Table 2 rows differ only in
the quantisation (RoIPool vs RoIWarp) and in the bilinear sampling (RoIWarp vs RoIAlign).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .roi_align import boxes_to_rois, roi_align_levels
from .roi_pool import _round_half_away
from .roi_weights import take

__all__ = ["roi_warp", "roi_warp_levels", "quantized_extent"]


def quantized_extent(boxes: Tensor, scale: Tensor | float) -> Tensor:
    """RoIPool's quantised RoI as a continuous box in feature pixels: [K, 4] xyxy boxes in
    input pixels (scale: a float or [K] per box) -> [K, 4] (x1q, y1q, x1q + w, y1q + h),
    w = max(x2q - x1q + 1, 1), h likewise; integers in the boxes' dtype."""
    if isinstance(scale, Tensor):
        scale = scale.to(boxes.dtype)[:, None]
    corners = _round_half_away(boxes * scale)  # [K, 4], exactly as roi_pool rounds
    size = (corners[:, 2:] - corners[:, :2] + 1).clamp(min=1)  # [K, 2] (w, h)
    return torch.cat([corners[:, :2], corners[:, :2] + size], dim=1)


def roi_warp_levels(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int | tuple[int, int],
    scales: list[float],
    sampling_ratio: int = -1,
    *,
    reduction: str = "avg",
) -> Tensor:
    """RoIWarp of each RoI on its own feature level, as roi_align_levels (same arguments
    and result layout, no `aligned`). rois: [K, 5] (batch index, xyxy) in input pixels."""
    if len(features) != len(scales):
        raise ValueError("need one spatial scale per feature level")
    levels = levels.to(device=rois.device, dtype=torch.int64)
    scale = torch.tensor([float(s) for s in scales], dtype=rois.dtype, device=rois.device)
    with torch.no_grad():
        extent = quantized_extent(rois[:, 1:], take(scale, levels))  # [K, 4] feature pixels
        warped = torch.cat([rois[:, :1], extent], dim=1)  # [K, 5]
    return roi_align_levels(
        features, warped, levels, output_size, [1.0] * len(features), sampling_ratio,
        aligned=False, reduction=reduction,
    )


def roi_warp(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    *,
    reduction: str = "avg",
) -> Tensor:
    """RoIWarp: RoIPool's quantised RoI, sampled bilinearly as RoIAlign (see the module).

    input: [N, C, H, W] float. boxes: [K, 5] (batch index, x1, y1, x2, y2) or a list of N
    per-image [L_i, 4] xyxy boxes, in input-image pixels. sampling_ratio > 0: that many
    samples per bin and axis; <= 0: ceil(bin size). reduction: "avg" or "max" over a bin's
    samples. Returns [K, C, oh, ow] in input's dtype.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be [N, C, H, W], got {tuple(input.shape)}")
    rois = boxes_to_rois(boxes).to(input.device)
    levels = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
    return roi_warp_levels([input], rois, levels, output_size, [spatial_scale],
                           sampling_ratio, reduction=reduction)
