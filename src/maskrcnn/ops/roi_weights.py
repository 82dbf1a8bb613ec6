"""Bilinear weights of RoIAlign bins, built vectorised over RoIs (shared by the RoI ops).

A bin's weight on pixel (y, x) is ``a(y) * b(x)``: ``axis_taps`` gives the taps of every
(RoI, bin) along one axis (bilinear taps of its sample points, merged per pixel, times a
gain), ``outer_rows`` takes their outer products as CSR rows of the sampling matrix, and
``block_ranges`` splits the RoIs so that one CSR block stays within a non-zero budget.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def repeat_index(counts: Tensor, total: int) -> Tensor:
    """repeat_interleave(arange(len(counts)), counts), total = counts.sum(), with serial ops:
    repeat_interleave always opens an OpenMP region, which costs a scheduler time slice per
    call when other processes load the cores."""
    marks = torch.zeros(total + 1, dtype=torch.int64, device=counts.device)
    marks.index_add_(0, torch.cumsum(counts, 0) - counts, torch.ones_like(counts))
    return torch.cumsum(marks[:total], 0) - 1  # [total]


def take(values: Tensor, index: Tensor) -> Tensor:
    """values[index] for 1-D tensors (index_select is several times faster than indexing)."""
    return values.index_select(0, index)


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def roi_geometry(
    rois: Tensor, out_hw: tuple[int, int], scale: Tensor, sampling_ratio: int, aligned: bool
) -> tuple[Tensor, ...]:
    """Per-RoI start, bin size and samples per bin, in feature-map pixels. scale: [K].

    Returns y1, x1, bin_h, bin_w ([K], rois' dtype) and grid_h, grid_w ([K] int64, >= 0).
    """
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * scale - offset
    y1 = rois[:, 2] * scale - offset
    roi_w = rois[:, 3] * scale - offset - x1
    roi_h = rois[:, 4] * scale - offset - y1
    if not aligned:  # legacy behaviour: RoIs are at least one pixel wide
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / out_hw[0]
    bin_w = roi_w / out_hw[1]
    if sampling_ratio > 0:
        grid_h = torch.full_like(bin_h, sampling_ratio, dtype=torch.int64)
        grid_w = grid_h
    else:  # adaptive: ceil(roi_size / output_size) samples per bin and axis
        grid_h = torch.ceil(bin_h).to(torch.int64).clamp(min=0)
        grid_w = torch.ceil(bin_w).to(torch.int64).clamp(min=0)
    return y1, x1, bin_h, bin_w, grid_h, grid_w


def axis_taps(
    start: Tensor, bin_size: Tensor, grid: Tensor, n_bins: int, length: Tensor, gain: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis for every (RoI, bin), merged per pixel.

    start, bin_size, gain: [K] float; grid, length: [K] int64 samples per bin and map size.
    A sample at c reads 0 if c < -1 or c > length, else is clamped to [0, length - 1].
    Returns counts [K*n_bins] (taps per bin), segment [E] (bin of each tap), pos [E] int64
    pixel and weight [E] (times the RoI's gain); taps are grouped by bin, in increasing
    pos, zero weights dropped.
    """
    dev, dt = start.device, start.dtype
    per_roi = grid * n_bins  # [K]
    roi = repeat_index(per_roi, int(per_roi.sum()))  # [T]
    first_sample = torch.cumsum(per_roi, 0) - per_roi  # [K]
    local = torch.arange(roi.shape[0], device=dev) - take(first_sample, roi)
    g = take(grid, roi)
    p = local // g  # bin index
    i = local - p * g  # sample index inside the bin
    b = take(bin_size, roi)
    # Same operation order as the reference kernels: start + p*bin + (i + .5)*bin / grid.
    c = take(start, roi) + p.to(dt) * b + (i.to(dt) + 0.5) * b / g.to(dt)
    last = take(length, roi) - 1
    inside = ((c >= -1.0) & (c <= last + 1)).to(dt) * take(gain, roi)
    c = c.clamp(min=0.0)
    low = torch.minimum(c.to(torch.int64), last)
    frac = (c - low.to(dt)) * (low < last)  # 0 on the last row
    high = torch.minimum(low + 1, last)
    return merge_taps(roi * n_bins + p, start.shape[0] * n_bins, low, high, frac, inside)


def merge_taps(
    seg: Tensor, n_seg: int, low: Tensor, high: Tensor, frac: Tensor, inside: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sum the (low, 1-frac) and (high, frac) taps of each segment per pixel; see axis_taps."""
    first = torch.zeros(n_seg, dtype=torch.int64, device=seg.device)
    first = first.scatter_reduce(0, seg, low, "amin", include_self=False)  # [S]
    base = take(first, seg)
    span = int((high - base).max()) + 1 if seg.numel() else 1
    buf = frac.new_zeros(n_seg * span)
    buf.index_add_(0, seg * span + (low - base), (1.0 - frac) * inside)
    buf.index_add_(0, seg * span + (high - base), frac * inside)
    keep = buf != 0  # [S * span]: weight by segment and offset from its first pixel
    flat_nz = keep.nonzero().squeeze(1)  # increasing: grouped by segment
    seg_nz = flat_nz // span
    pos = take(first, seg_nz) + (flat_nz - seg_nz * span)
    return keep.view(n_seg, span).sum(1), seg_nz, pos, take(buf, flat_nz)


def csr(row_lengths: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """CSR matrix from entries already sorted by row. row_lengths: [R] int64."""
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=cols.device)
    torch.cumsum(row_lengths, 0, out=crow[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def outer_rows(
    taps_y: tuple[Tensor, ...], taps_x: tuple[Tensor, ...], out_hw: tuple[int, int],
    r0: int, r1: int, n_cols: int,
) -> Tensor:
    """CSR block of S for RoIs r0..r1-1: row (r, py, px) = outer(a[r, py], b[r, px]).

    taps_*: (counts [K*n], index of the first tap [K*n], column part [E], weight [E]) per
    axis; an entry's column is y part (row offset + y * W) + x part (x). Every entry is
    enumerated as (row, y tap, x tap) with integer arithmetic on flat indices.
    """
    (cy, fy, col_y, wy), (cx, fx, col_x, wx) = taps_y, taps_x
    (oh, ow), k = out_hw, r1 - r0
    na = cy[r0 * oh : r1 * oh].view(k, oh, 1)
    nb = cx[r0 * ow : r1 * ow].view(k, 1, ow)
    row_nnz = (na * nb).flatten()  # [k, oh, ow] -> [R]
    nb_row = nb.expand(k, oh, ow).flatten()  # [R]
    fa_row = fy[r0 * oh : r1 * oh].view(k, oh, 1).expand(k, oh, ow).flatten()  # [R]
    fb_row = fx[r0 * ow : r1 * ow].view(k, 1, ow).expand(k, oh, ow).flatten()  # [R]
    dev = row_nnz.device
    q = repeat_index(row_nnz, int(row_nnz.sum()))  # [E]
    local = torch.arange(q.shape[0], device=dev) - take(torch.cumsum(row_nnz, 0) - row_nnz, q)
    nb_q = take(nb_row, q)
    i = local // nb_q
    ia = take(fa_row, q) + i  # y tap of each entry
    ib = take(fb_row, q) + (local - i * nb_q)  # x tap of each entry
    cols = take(col_y, ia) + take(col_x, ib)
    return csr(row_nnz, cols, take(wy, ia) * take(wx, ib), (row_nnz.shape[0], n_cols))


def block_ranges(nnz_per_roi: Tensor, budget: int) -> list[tuple[int, int]]:
    """Split RoIs 0..K-1 into consecutive ranges of about budget non-zeros: a range holds
    the RoIs whose cumulative count ends in the same multiple of budget (so at most budget
    plus one RoI's non-zeros)."""
    k = nnz_per_roi.shape[0]
    if k == 0 or int(nnz_per_roi.sum()) <= budget:
        return [(0, k)]
    block_id = (torch.cumsum(nnz_per_roi, 0) - 1).clamp(min=0) // budget  # [K] non-decreasing
    sizes = torch.unique_consecutive(block_id, return_counts=True)[1].tolist()
    ends = torch.cumsum(torch.tensor(sizes), 0).tolist()
    return [(end - size, end) for size, end in zip(sizes, ends)]
