"""RoIPool (Fast R-CNN), the quantised baseline that RoIAlign replaces.

Same results as torchvision.ops.roi_pool: RoI corners are rounded to feature pixels
(half away from zero), the RoI (at least 1 x 1 pixel, end inclusive) is cut into bins
[floor(i * bin), ceil((i + 1) * bin)) clipped to the map, each bin takes the max of its
pixels (the first one in raster order on ties) and empty bins give 0. The gradient goes
to each bin's arg-max pixel.

Vectorised as a separable max: for every RoI row, the max over each bin's column window
(one pass over the bin-width offsets), then for every bin the max over its rows (one pass
over the bin-height offsets). RoIs are grouped by size class (powers of two) so small RoIs
do not pay for the padding of large ones; the loops run over offsets and size classes,
never over RoIs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .roi_align import _pair, boxes_to_rois

__all__ = ["roi_pool"]


def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves away from zero (torch.round rounds halves to even)."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def _bin_edges(
    start: Tensor, roi_len: Tensor, n_bins: int, length: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Bin [first, end) pixel ranges along one axis, clipped to [0, length].

    start, roi_len: [K] int64; bin sizes are computed in dtype, like the reference kernel.
    Returns first, end: [K, n_bins] int64.
    """
    bin_size = roi_len.to(dtype) / n_bins  # [K]
    i = torch.arange(n_bins, device=start.device, dtype=dtype)
    first = torch.floor(i * bin_size[:, None]).to(torch.int64) + start[:, None]
    end = torch.ceil((i + 1) * bin_size[:, None]).to(torch.int64) + start[:, None]
    return first.clamp(0, length), end.clamp(0, length)


def _running_argmax(
    rows: Tensor, best: Tensor, arg: Tensor, index: Tensor, valid: Tensor
) -> tuple[Tensor, Tensor]:
    """Update (best, arg) [M, C] with candidates rows[index] [M, C] where valid [M]."""
    cand = rows.index_select(0, index.clamp(0, rows.shape[0] - 1))  # [M, C]
    better = (cand > best) & valid[:, None]  # strict: the first maximum wins ties
    return torch.where(better, cand, best), torch.where(better, index[:, None], arg)


def _pool_group(
    rows: Tensor, batch: Tensor, h_edges: tuple[Tensor, Tensor], w_edges: tuple[Tensor, Tensor],
    hw: tuple[int, int],
) -> Tensor:
    """Arg-max row index (or -1) of every bin of k RoIs of similar size: [k*ph*pw, C]."""
    (h_first, h_end), (w_first, w_end), (height, width) = h_edges, w_edges, hw
    k, ph = h_first.shape
    pw, c, dev = w_first.shape[1], rows.shape[1], rows.device
    span_first = h_first[:, 0]  # [k] first row any bin of the RoI reads
    span = int((h_end[:, -1] - span_first).clamp(min=0).max())
    bin_w = (w_end - w_first).clamp(min=0)  # [k, pw]
    bin_h = (h_end - h_first).clamp(min=0)  # [k, ph]
    if span == 0:  # every bin is empty
        return torch.full((k * ph * pw, c), -1, dtype=torch.int64, device=dev)
    # Pass 1: per RoI row y and bin column, max over the bin's columns.  [k, span, pw] rows.
    y = span_first[:, None] + torch.arange(span, device=dev)  # [k, span]
    y_ok = y < h_end[:, -1:]
    row_base = batch[:, None] * (height * width) + y * width  # [k, span]
    best = rows.new_full((k * span * pw, c), float("-inf"))
    arg = torch.full((k * span * pw, c), -1, dtype=torch.int64, device=dev)
    for dx in range(int(bin_w.max()) if bin_w.numel() else 0):
        index = (row_base[:, :, None] + (w_first + dx)[:, None, :]).flatten()  # [k*span*pw]
        valid = (y_ok[:, :, None] & (dx < bin_w)[:, None, :]).flatten()
        best, arg = _running_argmax(rows, best, arg, index, valid)
    # Pass 2: per bin, max over its rows of pass 1.  [k, ph, pw] bins.
    best_h = rows.new_full((k * ph * pw, c), float("-inf"))
    arg_h = torch.full((k * ph * pw, c), -1, dtype=torch.int64, device=dev)
    roi = torch.arange(k, device=dev)[:, None, None]
    col = torch.arange(pw, device=dev)[None, None, :]
    for dy in range(int(bin_h.max()) if bin_h.numel() else 0):
        y_rel = (h_first - span_first[:, None] + dy).clamp(max=max(span - 1, 0))  # [k, ph]
        pos = ((roi * span + y_rel[:, :, None]) * pw + col).flatten()  # [k*ph*pw] in pass 1
        valid = (dy < bin_h)[:, :, None].expand(k, ph, pw).flatten()
        cand, cand_arg = best.index_select(0, pos), arg.index_select(0, pos)
        better = (cand > best_h) & valid[:, None]
        best_h = torch.where(better, cand, best_h)
        arg_h = torch.where(better, cand_arg, arg_h)
    return arg_h


def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool, same arguments and results as torchvision.ops.roi_pool.

    input: [N, C, H, W] float. boxes: [K, 5] (batch index, x1, y1, x2, y2) or a list of N
    per-image [L_i, 4] xyxy boxes, in input-image pixels. Returns [K, C, oh, ow].
    """
    if input.dim() != 4:
        raise ValueError(f"input must be [N, C, H, W], got {tuple(input.shape)}")
    (oh, ow), (n, c, height, width) = _pair(output_size), input.shape
    rows_grad = input.permute(0, 2, 3, 1).reshape(n * height * width, c)  # [NHW, C]
    rows = rows_grad.detach()
    with torch.no_grad():
        rois = boxes_to_rois(boxes, input.dtype).to(input.device)  # [K, 5]
        corners = _round_half_away(rois[:, 1:] * spatial_scale).to(torch.int64)  # [K, 4]
        roi_w = (corners[:, 2] - corners[:, 0] + 1).clamp(min=1)
        roi_h = (corners[:, 3] - corners[:, 1] + 1).clamp(min=1)
        h_first, h_end = _bin_edges(corners[:, 1], roi_h, oh, height, rois.dtype)  # [K, oh]
        w_first, w_end = _bin_edges(corners[:, 0], roi_w, ow, width, rois.dtype)  # [K, ow]
        span = torch.maximum(h_end[:, -1] - h_first[:, 0], w_end[:, -1] - w_first[:, 0])
        size_class = torch.ceil(torch.log2(span.clamp(min=1).to(torch.float64))).to(torch.int64)
        batch = rois[:, 0].to(torch.int64)
        arg = torch.full((rois.shape[0], oh * ow, c), -1, dtype=torch.int64, device=input.device)
        for cls in torch.unique(size_class).tolist():
            idx = (size_class == cls).nonzero().squeeze(1)
            arg[idx] = _pool_group(
                rows, batch[idx], (h_first[idx], h_end[idx]), (w_first[idx], w_end[idx]),
                (height, width),
            ).view(idx.shape[0], oh * ow, c)
        arg = arg.view(-1, c)  # [K*oh*ow, C] row of the max, -1 for empty bins
    out = torch.gather(rows_grad, 0, arg.clamp(min=0))  # [K*oh*ow, C]
    out = torch.where(arg >= 0, out, 0.0)
    return out.view(-1, oh, ow, c).permute(0, 3, 1, 2).contiguous()  # [K, C, oh, ow]
