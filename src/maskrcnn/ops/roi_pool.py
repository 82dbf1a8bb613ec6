"""RoIPool (Fast R-CNN), the quantised baseline that RoIAlign replaces.

Same results as torchvision.ops.roi_pool: RoI corners are rounded to feature pixels
(half away from zero), the RoI (at least 1 x 1 pixel, end inclusive) is cut into bins
[floor(i * bin), ceil((i + 1) * bin)) clipped to the map, each bin takes the max of its
pixels (the first one in raster order on ties) and empty bins give 0. The gradient goes
to each bin's arg-max pixel.

Vectorised as a separable max: for every map row a RoI spans, the max over each bin's
column window, then for every bin the max of those over its rows. Each pass gathers the
windows of one length at a time (a loop over distinct bin sizes, never over RoIs) and
reduces them with one max; RoIs are pooled in blocks to bound memory. It reads each RoI's
area once per channel, like the reference kernel, and runs a few times slower than it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .roi_align import boxes_to_rois
from .roi_weights import block_ranges, pair, repeat_index

__all__ = ["roi_pool", "roi_pool_levels"]

_CHUNK = 1 << 24  # elements of the largest intermediate (gathered windows, pass-1 maxima)


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


def _window_argmax(
    table: Tensor, table_arg: Tensor | None, start: Tensor, length: Tensor, stride: int
) -> tuple[Tensor, Tensor]:
    """Max over windows of rows: table rows start + stride * [0, length) for each query.

    table: [T, C] values; table_arg: [T, C] pixel index of each value (None: the row
    itself). start, length: [M] int64. Returns max [M, C] (-inf for empty windows) and the
    pixel index of the first maximum [M, C] (-1 for empty windows). Queries are grouped by
    length (a loop over distinct lengths), each group is one gather and one max reduction,
    in chunks that bound memory.
    """
    m, c = start.shape[0], table.shape[1]
    best = table.new_full((m, c), float("-inf"))
    arg = torch.full((m, c), -1, dtype=torch.int64, device=table.device)
    for size in torch.unique(length).tolist():
        if size == 0:
            continue
        group = (length == size).nonzero().squeeze(1)
        for part in group.split(max(1, _CHUNK // (size * c))):
            rows = start[part, None] + stride * torch.arange(size, device=start.device)
            values, which = table.index_select(0, rows.flatten()).view(-1, size, c).max(1)
            picked = rows.gather(1, which)  # [m', C] table row of each maximum
            best[part] = values
            arg[part] = picked if table_arg is None else table_arg.gather(0, picked)
    return best, arg


def _pool_bins(
    rows: Tensor, batch: Tensor, h_edges: tuple[Tensor, Tensor], w_edges: tuple[Tensor, Tensor],
    hw: tuple[int, int],
) -> Tensor:
    """Arg-max pixel (row of rows, or -1 for empty bins) of every bin: [K*ph*pw, C].

    Pass 1: for every map row y a RoI spans and every bin column, the max over the bin's
    columns. Pass 2: for every bin, the max of pass 1 over the bin's rows. Ties keep the
    first pixel in raster order, like the reference kernel.
    """
    (h_first, h_end), (w_first, w_end), (height, width) = h_edges, w_edges, hw
    k, ph = h_first.shape
    pw, dev = w_first.shape[1], rows.device
    span_first = h_first[:, 0]  # [K] first map row any bin of the RoI reads
    span = (h_end[:, -1] - span_first).clamp(min=0)  # [K] map rows it spans
    first_q = torch.cumsum(span, 0) - span  # [K] first spanned row of each RoI
    roi = repeat_index(span, int(span.sum()))  # [S] RoI of each spanned row
    y = span_first[roi] + torch.arange(roi.shape[0], device=dev) - first_q[roi]  # [S]
    line = batch[roi] * (height * width) + y * width  # [S] pixel (y, 0) of the RoI's image
    start1 = (line[:, None] + w_first[roi]).flatten()  # [S, pw] -> [S*pw] queries (r, y, px)
    len1 = (w_end - w_first).clamp(min=0)[roi].flatten()
    best1, arg1 = _window_argmax(rows, None, start1, len1, 1)  # [S*pw, C]
    cols = torch.arange(pw, device=dev)
    start2 = (first_q[:, None] + h_first - span_first[:, None])[:, :, None] * pw + cols
    len2 = (h_end - h_first).clamp(min=0)[:, :, None].expand(k, ph, pw)
    return _window_argmax(best1, arg1, start2.flatten(), len2.flatten(), pw)[1]


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
    (oh, ow), (n, c, height, width) = pair(output_size), input.shape
    rows_grad = input.permute(0, 2, 3, 1).reshape(n * height * width, c)  # [NHW, C]
    rows = rows_grad.detach()
    with torch.no_grad():
        rois = boxes_to_rois(boxes, input.dtype).to(input.device)  # [K, 5]
        corners = _round_half_away(rois[:, 1:] * spatial_scale).to(torch.int64)  # [K, 4]
        roi_w = (corners[:, 2] - corners[:, 0] + 1).clamp(min=1)
        roi_h = (corners[:, 3] - corners[:, 1] + 1).clamp(min=1)
        h_first, h_end = _bin_edges(corners[:, 1], roi_h, oh, height, rois.dtype)  # [K, oh]
        w_first, w_end = _bin_edges(corners[:, 0], roi_w, ow, width, rois.dtype)  # [K, ow]
        batch = rois[:, 0].to(torch.int64)
        # Pass 1 holds span * ow * C values per RoI: bound it by pooling RoIs in blocks.
        work = (h_end[:, -1] - h_first[:, 0]).clamp(min=1) * ow * c
        arg = torch.cat([
            _pool_bins(rows, batch[r0:r1], (h_first[r0:r1], h_end[r0:r1]),
                       (w_first[r0:r1], w_end[r0:r1]), (height, width))
            for r0, r1 in block_ranges(work, _CHUNK)
        ])  # [K*oh*ow, C] row of the max, -1 for empty bins
    out = torch.gather(rows_grad, 0, arg.clamp(min=0))  # [K*oh*ow, C]
    out = torch.where(arg >= 0, out, 0.0)
    return out.view(-1, oh, ow, c).permute(0, 3, 1, 2).contiguous()  # [K, C, oh, ow]


def roi_pool_levels(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int | tuple[int, int],
    scales: list[float],
) -> Tensor:
    """RoIPool of each RoI on its own feature level (FPN): one roi_pool per level read.

    features: L tensors [N, C, H_l, W_l]; rois: [K, 5] (batch index, xyxy) in input pixels;
    levels: [K] int64 in [0, L); scales: L spatial scales. Returns [K, C, oh, ow] in the
    order of rois, in the features' dtype (float types other than float32/float64 pool in
    float32, so that bin edges are not computed in a low precision).
    """
    if len(features) != len(scales) or any(f.dim() != 4 for f in features):
        raise ValueError("need one spatial scale per [N, C, H, W] feature level")
    (oh, ow), dtype = pair(output_size), features[0].dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    rois = rois.to(device=features[0].device, dtype=work)
    levels = levels.to(device=rois.device, dtype=torch.int64)
    k, c = rois.shape[0], features[0].shape[1]
    out = rois.new_zeros((k, c, oh, ow))
    read = torch.unique(levels).tolist() or [0]  # no RoIs: still an (empty) graph node
    for level in read:
        idx = (levels == level).nonzero().squeeze(1)
        pooled = roi_pool(features[level].to(work), rois[idx], (oh, ow), scales[level])
        out = out.index_copy(0, idx, pooled)
    return out.to(dtype)
