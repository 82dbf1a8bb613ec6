"""RoIAlign of one-channel masks (the mask head's training targets) by separable products.

A bin of average RoIAlign weighs pixel (y, x) by a(y) * b(x) (see roi_align), so cropping a
mask M [H, W] to an RoI is ``A @ M @ B^T`` with A [oh, H] and B [ow, W] the RoI's per-axis
weights. Each RoI only reads a window of its mask (its box plus a pixel), so per RoI this is
two small dense products on that window, converted to float on the fly. Same results as
roi_align(masks[:, None].float(), rois, size, 1.0, sampling_ratio, aligned)[:, 0] up to
float rounding, without converting whole masks and without the ceil(roi / size)^2 samples
per bin that adaptive sampling gives on full-resolution masks. No autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .roi_weights import axis_taps, pair, roi_geometry, take

__all__ = ["roi_align_masks"]


def roi_align_masks(
    masks: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    sampling_ratio: int = 0,
    aligned: bool = False,
) -> Tensor:
    """Average RoIAlign (spatial scale 1) of mask rois[i, 0] over box rois[i, 1:].

    masks: [G, H, W] of any dtype (bool, uint8, float); rois: [P, 5] float (mask index,
    x1, y1, x2, y2) in mask pixels. Returns [P, oh, ow] in rois' dtype.
    """
    if masks.dim() != 3 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"need masks [G, H, W] and rois [P, 5], got {tuple(masks.shape)} "
                         f"and {tuple(rois.shape)}")
    oh, ow = pair(output_size)
    p, (height, width) = rois.shape[0], masks.shape[1:]
    dt = rois.dtype if rois.dtype in (torch.float32, torch.float64) else torch.float32
    rois = rois.to(device=masks.device, dtype=dt)
    out = rois.new_zeros(p, oh, ow)
    if p == 0 or height == 0 or width == 0:
        return out
    one = torch.ones(p, dtype=dt, device=rois.device)
    y1, x1, bin_h, bin_w, grid_h, grid_w = roi_geometry(rois, (oh, ow), one, sampling_ratio,
                                                         aligned)
    gain = 1.0 / (grid_h * grid_w).clamp(min=1).to(dt)  # average of the samples
    taps_y = axis_taps(y1, bin_h, grid_h, oh, torch.full_like(grid_h, height), gain)
    taps_x = axis_taps(x1, bin_w, grid_w, ow, torch.full_like(grid_w, width), one)
    # Window of each RoI: [first, last] pixel read along each axis ([P] int64; empty if none).
    y0, y_len = _window(taps_y, p, oh)
    x0, x_len = _window(taps_x, p, ow)
    wy = _axis_matrix(taps_y, y0, p, oh, int(y_len.max()))  # [P, oh, max window height]
    wx = _axis_matrix(taps_x, x0, p, ow, int(x_len.max()))  # [P, ow, max window width]
    index = rois[:, 0].to(torch.int64).tolist()
    windows = zip(y0.tolist(), y_len.tolist(), x0.tolist(), x_len.tolist())
    with torch.autocast(masks.device.type, enabled=False):  # targets stay in full precision
        for i, (y, h, x, w) in enumerate(windows):
            if h and w:
                window = masks[index[i], y : y + h, x : x + w].to(dt)  # [h, w]
                torch.matmul(wy[i, :, :h] @ window, wx[i, :, :w].T, out=out[i])
    return out


def _window(taps: tuple[Tensor, ...], p: int, n_bins: int) -> tuple[Tensor, Tensor]:
    """First pixel and window length per RoI from its taps along one axis: [P], [P]."""
    _, seg, pos, _ = taps
    roi = seg // n_bins
    first = pos.new_zeros(p).scatter_reduce(0, roi, pos, "amin", include_self=False)
    last = pos.new_full((p,), -1).scatter_reduce(0, roi, pos, "amax", include_self=False)
    return first, (last - first + 1).clamp(min=0)


def _axis_matrix(taps: tuple[Tensor, ...], start: Tensor, p: int, n_bins: int,
                 length: int) -> Tensor:
    """Dense per-axis weights of every RoI, relative to its window start: [P, n, L]."""
    _, seg, pos, weight = taps
    matrix = weight.new_zeros(p * n_bins, max(length, 1))
    matrix.index_put_((seg, pos - take(start, seg // n_bins)), weight, accumulate=True)
    return matrix.view(p, n_bins, -1)
