"""Explicit loop references of the RoI poolers, from their definitions (float64, tiny inputs).

Per RoI, per bin, per sample point; every read is written out. Differentiable through
autograd, so the ops' gradients can be compared with these. Used by tests/ops and
tests/modeling; not a test module.
"""

from __future__ import annotations

import math

import torch


def round_half_away(v: float) -> int:
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def bilinear(plane: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear read of [C, H, W] at (y, x) as the RoIAlign kernels read it: 0 beyond one
    pixel outside the map, clamped to the map otherwise; coordinate j is pixel j."""
    _, height, width = plane.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return plane.new_zeros(plane.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * plane[:, y0, x0] + hy * lx * plane[:, y0, x1]
            + ly * hx * plane[:, y1, x0] + ly * lx * plane[:, y1, x1])


def sample_bins(plane, y1, x1, roi_h, roi_w, out_hw, sampling_ratio, reduction):
    """RoIAlign's bins of the continuous box (y1, x1, roi_h, roi_w) on plane: [C, oh, ow]."""
    bin_h, bin_w = roi_h / out_hw[0], roi_w / out_hw[1]
    gh = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_h), 0)
    gw = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_w), 0)
    bins = []
    for py in range(out_hw[0]):
        for px in range(out_hw[1]):
            samples = [
                bilinear(plane, y1 + py * bin_h + (iy + 0.5) * bin_h / gh,
                         x1 + px * bin_w + (ix + 0.5) * bin_w / gw)
                for iy in range(gh) for ix in range(gw)
            ]
            if not samples:
                bins.append(plane.new_zeros(plane.shape[0]))
            elif reduction == "avg":
                bins.append(torch.stack(samples).sum(0) / (gh * gw))
            else:
                bins.append(torch.stack(samples).max(0).values)
    return torch.stack(bins, 1).view(-1, *out_hw)


def roi_align_one(plane, box, out_hw, scale, sampling_ratio, aligned=False, reduction="avg"):
    """RoIAlign of one box (x1, y1, x2, y2) in input pixels on plane [C, H, W]."""
    offset = 0.5 if aligned else 0.0
    x1, y1 = box[0] * scale - offset, box[1] * scale - offset
    roi_w, roi_h = box[2] * scale - offset - x1, box[3] * scale - offset - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    return sample_bins(plane, y1, x1, roi_h, roi_w, out_hw, sampling_ratio, reduction)


def roi_warp_one(plane, box, out_hw, scale, sampling_ratio, reduction="avg"):
    """RoIWarp as ops/roi_warp.py defines it: RoIPool's quantised RoI (pixels x1q..x2q,
    width max(x2q - x1q + 1, 1)), sampled like RoIAlign with no offset."""
    x1q, y1q, x2q, y2q = (round_half_away(v * scale) for v in box)
    roi_w, roi_h = max(x2q - x1q + 1, 1), max(y2q - y1q + 1, 1)
    return sample_bins(plane, float(y1q), float(x1q), float(roi_h), float(roi_w), out_hw,
                       sampling_ratio, reduction)


def roi_pool_one(plane, box, out_hw, scale):
    """RoIPool (Fast R-CNN): quantised RoI, max over the pixels of each bin
    [floor(i * bin), ceil((i + 1) * bin)) clipped to the map; an empty bin gives 0."""
    _, height, width = plane.shape
    x1q, y1q, x2q, y2q = (round_half_away(v * scale) for v in box)
    roi_w, roi_h = max(x2q - x1q + 1, 1), max(y2q - y1q + 1, 1)
    bin_h, bin_w = roi_h / out_hw[0], roi_w / out_hw[1]
    bins = []
    for py in range(out_hw[0]):
        h0 = min(max(math.floor(py * bin_h) + y1q, 0), height)
        h1 = min(max(math.ceil((py + 1) * bin_h) + y1q, 0), height)
        for px in range(out_hw[1]):
            w0 = min(max(math.floor(px * bin_w) + x1q, 0), width)
            w1 = min(max(math.ceil((px + 1) * bin_w) + x1q, 0), width)
            if h1 <= h0 or w1 <= w0:
                bins.append(plane.new_zeros(plane.shape[0]))
            else:
                bins.append(plane[:, h0:h1, w0:w1].flatten(1).max(1).values)
    return torch.stack(bins, 1).view(-1, *out_hw)


def pool_one(pooler, plane, box, out_hw, scale, sampling_ratio, aligned=False):
    """The pooler named as in maskrcnn.modeling.poolers.POOLERS, on one box."""
    if pooler == "roi_pool":
        return roi_pool_one(plane, box, out_hw, scale)
    reduction = "max" if pooler.endswith("_max") else "avg"
    if pooler.startswith("roi_warp"):
        return roi_warp_one(plane, box, out_hw, scale, sampling_ratio, reduction)
    return roi_align_one(plane, box, out_hw, scale, sampling_ratio, aligned, reduction)


def pool_rois(pooler, inputs, rois, levels, out_hw, scales, sampling_ratio, aligned=False):
    """Each RoI [K, 5] (batch index, xyxy) pooled on inputs[levels[k]] -> [K, C, oh, ow]."""
    out = [
        pool_one(pooler, inputs[level][int(roi[0])], roi[1:], out_hw, scales[level],
                 sampling_ratio, aligned)
        for roi, level in zip(rois.tolist(), levels.tolist())
    ]
    return torch.stack(out) if out else inputs[0].new_zeros((0, inputs[0].shape[1], *out_hw))
