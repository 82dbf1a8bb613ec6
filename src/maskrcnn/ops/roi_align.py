"""RoIAlign (He et al. 2017, sec. 3): bilinear sampling of RoI bins, no quantisation.

Every RoI bin is a fixed linear combination of feature-map pixels (the bilinear weights of
its sample points over the number of samples), so the whole op is one sparse product
``out[K*oh*ow, C] = S[K*oh*ow, N*H*W] @ F[N*H*W, C]`` with F the channels-last feature map.
The weights are separable: a bin's weight on pixel (y, x) is ``a(y) * b(x)``, where ``a``
sums the y-taps of the bin's sample rows and ``b`` the x-taps of its sample columns. We build
``a`` and ``b`` per bin (merging taps that hit the same pixel row or column, so a bin of 2x2
samples spanning 1.5 pixels costs 3x3 entries, not 16), take their outer products as CSR rows
(adaptive sampling just gives rows of different lengths), multiply in the sparse BLAS, and
backpropagate with ``S^T @ grad``. All of it is vectorised over RoIs (the weights are built
in roi_weights; this module stacks the feature rows and multiplies). Results match
torchvision.ops.roi_align.

Several feature levels (FPN) are one product too: the rows of all levels are stacked and
each RoI's weights point into its own level (``roi_align_levels``), so the pooled RoIs come
out in their input order with no gather or scatter afterwards. NCHW maps are transposed to
rows once per call; a level whose RoIs read few of its pixels gives only those rows
(an unread level none), and channels_last maps are read in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .roi_weights import (
    axis_taps,
    block_ranges,
    csr,
    outer_rows,
    pair,
    repeat_index,
    roi_geometry,
    take,
)

__all__ = ["roi_align", "roi_align_levels", "boxes_to_rois"]

# Non-zeros of one sparse block: bounds memory when adaptive sampling meets huge RoIs.
_MAX_NNZ_PER_BLOCK = 1 << 22
# Products with fewer multiply-adds than this avoid the sparse BLAS (see _product).
_SMALL_PRODUCT = 1 << 15
# A level whose RoIs read fewer than this fraction of its pixels is gathered, not transposed.
_GATHER_BELOW = 0.75


def boxes_to_rois(boxes: Tensor | list[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """Per-image list of [L_i, 4] xyxy boxes (or a [K, 5] tensor) -> [K, 5] (batch idx, xyxy)."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes tensor must be [K, 5], got {tuple(boxes.shape)}")
        return boxes if dtype is None else boxes.to(dtype)
    if len(boxes) == 0:
        raise ValueError("boxes list is empty: give one (possibly empty) tensor per image")
    dtype = dtype or boxes[0].dtype
    cat = torch.cat([b.to(dtype).reshape(-1, 4) for b in boxes], dim=0)  # [K, 4]
    counts = torch.tensor([b.shape[0] for b in boxes], device=cat.device)
    batch_idx = repeat_index(counts, cat.shape[0])
    return torch.cat([batch_idx.to(dtype)[:, None], cat], dim=1)  # [K, 5]


def _product(block: Tensor, dense: Tensor, out: Tensor, transpose: bool, add: bool) -> None:
    """out = block @ dense (block^T @ dense if transpose; out += ... if add). Small products
    use plain indexing ops: the sparse BLAS opens a thread team even for tiny matrices."""
    if block.values().numel() * dense.shape[1] >= _SMALL_PRODUCT:
        torch.addmm(out, block.t() if transpose else block, dense, beta=int(add), out=out)
        return
    rows = repeat_index(block.crow_indices().diff(), block.values().numel())  # [nnz]
    src, dst = (rows, block.col_indices()) if transpose else (block.col_indices(), rows)
    if not add:
        out.zero_()
    out.index_add_(0, dst, dense.index_select(0, src) * block.values()[:, None])


def _image_rows(level: Tensor) -> list[Tensor]:
    """[N, C, H, W] -> N views [H*W, C] (strided for NCHW, contiguous for NHWC)."""
    n, c, h, w = level.shape
    return [level[i].permute(1, 2, 0).reshape(h * w, c) for i in range(n)]  # views


def _split_by_image(rows: Tensor, n: int, hw: int) -> list[Tensor]:
    """Sorted row indices of a level -> per-image indices into its H*W rows."""
    counts = torch.bincount(rows // hw, minlength=n).tolist()
    return [part - i * hw for i, part in enumerate(rows.split(counts))]


def _stack_rows(features: tuple[Tensor, ...], plan: list[Tensor | None]) -> Tensor:
    """Channels-last rows of the levels, [sum_l rows_l, C]: all N*H_l*W_l rows of a level
    whose plan is None (a transposed copy; a view for one NHWC level), else only the rows
    listed (sorted indices into the level's N*H_l*W_l rows)."""
    c = features[0].shape[1]
    if len(features) == 1 and plan[0] is None:  # [N, C, H, W] -> [N, H, W, C] -> [NHW, C]
        return features[0].permute(0, 2, 3, 1).contiguous().view(-1).view(-1, c)  # strides (C, 1)
    sizes = [f.shape[0] * f.shape[2] * f.shape[3] if rows is None else rows.numel()
             for f, rows in zip(features, plan)]
    stacked = features[0].new_empty((sum(sizes), c))
    for f, rows, part in zip(features, plan, stacked.split(sizes)):
        n, _, h, w = f.shape
        if rows is None:
            part.view(n, h, w, c).copy_(f.permute(0, 2, 3, 1))  # [N, C, H, W] -> [N, H, W, C]
            continue
        per_image = _split_by_image(rows, n, h * w)
        for image, index, out in zip(_image_rows(f), per_image, part.split(
                [len(ix) for ix in per_image])):
            torch.index_select(image, 0, index, out=out)
    return stacked


def _unstack_rows(
    grad_rows: Tensor, layouts: list[tuple[torch.Size, bool]], plan: list[Tensor | None]
) -> list[Tensor]:
    """Inverse of _stack_rows for gradients, in each level's own memory layout."""
    sizes = [shape[0] * shape[2] * shape[3] if rows is None else rows.numel()
             for (shape, _), rows in zip(layouts, plan)]
    grads = []
    for (shape, channels_last), rows, part in zip(layouts, plan, grad_rows.split(sizes)):
        n, c, h, w = shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if rows is not None:  # scatter the rows read (if any) into a zero gradient
            grad = torch.empty(shape, dtype=part.dtype, device=part.device, memory_format=fmt)
            grad.zero_()
            per_image = _split_by_image(rows, n, h * w)
            for image, index, src in zip(_image_rows(grad), per_image, part.split(
                    [len(ix) for ix in per_image])):
                image.index_copy_(0, index, src)
        elif channels_last:
            grad = part.view(n, h, w, c).permute(0, 3, 1, 2)  # free view
        else:
            grad = part.new_empty(shape)
            for i in range(n):  # [HW, C] -> [C, HW]: 2-D transposes take a blocked fast path
                grad[i].view(c, h * w).copy_(part[i * h * w : (i + 1) * h * w].t())
        grads.append(grad)
    return grads


def _column_plan(
    blocks: list[Tensor], features: list[Tensor]
) -> tuple[list[Tensor], list[Tensor | None]]:
    """Which rows of each level the product reads. A level read at fewer than
    _GATHER_BELOW of its pixels gives only those rows (gathered, cheaper than transposing
    the whole map; none at all if unused) and the columns of S are renumbered to match."""
    sizes = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
    if len(features) == 1 and features[0].is_contiguous(memory_format=torch.channels_last):
        return blocks, [None]  # its rows are a free view: nothing to save
    used = torch.zeros(sum(sizes), dtype=torch.bool, device=features[0].device)
    for block in blocks:
        used[block.col_indices()] = True
    plan: list[Tensor | None] = []
    for used_level in used.split(sizes):
        n_used = int(used_level.sum())
        dense = n_used >= _GATHER_BELOW * used_level.numel()
        plan.append(None if dense else used_level.nonzero().squeeze(1))
    if all(rows is None for rows in plan):
        return blocks, plan
    keep = torch.cat([torch.ones_like(u) if rows is None else u
                      for u, rows in zip(used.split(sizes), plan)])
    new_col = torch.cumsum(keep, 0) - 1  # [sum sizes] old column -> new column
    shape_new = int(keep.sum())
    blocks = [csr(block.crow_indices().diff(), take(new_col, block.col_indices()),
                   block.values(), (block.shape[0], shape_new)) for block in blocks]
    return blocks, plan


class _BinMix(torch.autograd.Function):
    """out[R, C] = S @ rows(features) for constant sparse blocks S; grad = S^T @ grad_out."""

    @staticmethod
    def forward(ctx, blocks: list[Tensor], plan: list[Tensor | None],  # type: ignore[override]
                *features: Tensor) -> Tensor:
        rows = _stack_rows(features, plan)  # [rows read, C]
        ctx.blocks, ctx.plan = blocks, plan
        ctx.layouts = [(f.shape, f.is_contiguous(memory_format=torch.channels_last))
                       for f in features]
        out = rows.new_empty((sum(block.shape[0] for block in blocks), rows.shape[1]))
        for block, part in zip(blocks, out.split([b.shape[0] for b in blocks])):
            _product(block, rows, part, transpose=False, add=False)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad = grad.contiguous()
        grad_rows = grad.new_empty((ctx.blocks[0].shape[1], grad.shape[1]))  # [rows read, C]
        parts = grad.split([b.shape[0] for b in ctx.blocks])
        for i, (block, part) in enumerate(zip(ctx.blocks, parts)):
            _product(block, part, grad_rows, transpose=True, add=i > 0)
        return (None, None, *_unstack_rows(grad_rows, ctx.layouts, ctx.plan))


def _level_tables(features: list[Tensor], scales: list[float], dtype: torch.dtype):
    """Per level: scale [L] (dtype), height, width, first stacked row [L] (int64)."""
    dev = features[0].device
    heights = torch.tensor([f.shape[2] for f in features], device=dev)
    widths = torch.tensor([f.shape[3] for f in features], device=dev)
    sizes = torch.tensor([f.shape[0] * f.shape[2] * f.shape[3] for f in features], device=dev)
    scale = torch.tensor(scales, dtype=dtype, device=dev)
    return scale, heights, widths, torch.cumsum(sizes, 0) - sizes


def _align_avg_rows(
    features: list[Tensor], rois: Tensor, levels: Tensor, out_hw: tuple[int, int],
    scales: list[float], sampling_ratio: int, aligned: bool,
) -> Tensor:
    """Average RoIAlign of RoI i on level levels[i], as rows: [K*oh*ow, C]."""
    (oh, ow), k = out_hw, rois.shape[0]
    with torch.no_grad():
        scale, heights, widths, first_row = _level_tables(features, scales, rois.dtype)
        height, width = take(heights, levels), take(widths, levels)  # [K]
        y1, x1, bin_h, bin_w, grid_h, grid_w = roi_geometry(
            rois, out_hw, take(scale, levels), sampling_ratio, aligned
        )
        gain = 1.0 / (grid_h * grid_w).clamp(min=1).to(rois.dtype)  # average of the samples
        cy, seg_y, pos_y, wy = axis_taps(y1, bin_h, grid_h, oh, height, gain)
        cx, _, pos_x, wx = axis_taps(x1, bin_w, grid_w, ow, width, torch.ones_like(gain))
        # First row of each RoI's image in the stacked rows, then y * W: [K] -> [Ey]
        image_row = take(first_row, levels) + rois[:, 0].to(torch.int64) * height * width
        roi_y = seg_y // oh
        col_y = take(image_row, roi_y) + pos_y * take(width, roi_y)
        taps_y = (cy, torch.cumsum(cy, 0) - cy, col_y, wy)
        taps_x = (cx, torch.cumsum(cx, 0) - cx, pos_x, wx)
        nnz_per_roi = cy.view(k, oh).sum(1) * cx.view(k, ow).sum(1)  # [K]
        n_cols = sum(f.shape[0] * f.shape[2] * f.shape[3] for f in features)
        blocks = [
            outer_rows(taps_y, taps_x, out_hw, r0, r1, n_cols)
            for r0, r1 in block_ranges(nnz_per_roi, _MAX_NNZ_PER_BLOCK)
        ]
        blocks, plan = _column_plan(blocks, features)
    return _BinMix.apply(blocks, plan, *features)


def _rows_to_rois(rows: Tensor, k: int, out_hw: tuple[int, int], channels_last: bool) -> Tensor:
    """[K*oh*ow, C] -> [K, C, oh, ow] (channels_last strides, or contiguous)."""
    out = rows.view(k, out_hw[0], out_hw[1], rows.shape[1]).permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


def _align_max(
    features: list[Tensor], rois: Tensor, levels: Tensor, out_hw: tuple[int, int],
    scales: list[float], sampling_ratio: int, aligned: bool,
) -> Tensor:
    """Max RoIAlign: [K, C, oh, ow]. The gh x gw samples of a bin are the bins of an average
    RoIAlign with output (oh*gh, ow*gw) and one sample per bin; max-pool those. Loops over the
    distinct sampling grids only (one for a fixed sampling ratio)."""
    k, c = rois.shape[0], features[0].shape[1]
    scale = _level_tables(features, scales, rois.dtype)[0]
    grid_h, grid_w = roi_geometry(rois, out_hw, take(scale, levels), sampling_ratio, aligned)[4:]
    grids = torch.unique(torch.stack([grid_h, grid_w], 1), dim=0).tolist()
    if all(gy == 0 or gx == 0 for gy, gx in grids):  # no samples at all (or no RoIs): zeros,
        rows = _align_avg_rows(features, rois, levels, out_hw, scales, sampling_ratio, aligned)
        return _rows_to_rois(rows, k, out_hw, channels_last=False)  # connected to the graph
    out = features[0].new_zeros((k, c) + out_hw)
    for gy, gx in grids:
        if gy == 0 or gx == 0:  # empty (aligned, degenerate) RoIs: no samples, output 0
            continue
        idx = ((grid_h == gy) & (grid_w == gx)).nonzero().squeeze(1)
        fine_hw = (out_hw[0] * gy, out_hw[1] * gx)
        fine = _align_avg_rows(features, rois[idx], levels[idx], fine_hw, scales, 1, aligned)
        fine = _rows_to_rois(fine, idx.shape[0], fine_hw, channels_last=True)
        out = out.index_copy(0, idx, F.max_pool2d(fine, (gy, gx)))
    return out


def roi_align_levels(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int | tuple[int, int],
    scales: list[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    reduction: str = "avg",
) -> Tensor:
    """RoIAlign of each RoI on its own feature level, in one sparse product.

    features: L tensors [N, C, H_l, W_l] (same N, C, dtype). rois: [K, 5] (batch index,
    x1, y1, x2, y2) in input-image pixels. levels: [K] int64 in [0, L). scales: L spatial
    scales. Other arguments as in roi_align. Returns [K, C, oh, ow] in the order of rois;
    channels_last strides if the first level is channels_last, contiguous otherwise.
    """
    if reduction not in ("avg", "max"):
        raise ValueError(f"reduction must be 'avg' or 'max', got {reduction!r}")
    if len(features) != len(scales) or any(f.dim() != 4 for f in features):
        raise ValueError("need one spatial scale per [N, C, H, W] feature level")
    out_hw = pair(output_size)
    dtype = features[0].dtype
    # The sparse BLAS has float32/float64 kernels; other float types compute in float32.
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    maps = [f.to(work) for f in features]
    rois = rois.to(device=maps[0].device, dtype=work)
    levels = levels.to(device=maps[0].device, dtype=torch.int64)
    channels_last = features[0].is_contiguous(memory_format=torch.channels_last)
    scales = [float(s) for s in scales]
    if reduction == "max":
        out = _align_max(maps, rois, levels, out_hw, scales, sampling_ratio, aligned)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = out.contiguous(memory_format=fmt)
    else:
        rows = _align_avg_rows(maps, rois, levels, out_hw, scales, sampling_ratio, aligned)
        out = _rows_to_rois(rows, rois.shape[0], out_hw, channels_last)
    return out.to(dtype)


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    reduction: str = "avg",
) -> Tensor:
    """RoIAlign, same arguments and results as torchvision.ops.roi_align (reduction="avg").

    input: [N, C, H, W] float. boxes: [K, 5] (batch index, x1, y1, x2, y2) or a list of N
    per-image [L_i, 4] xyxy boxes, in input-image pixels (scaled by spatial_scale).
    sampling_ratio > 0: that many samples per bin and axis; <= 0: ceil(roi_size / out).
    aligned: shift by -0.5 pixel (pixel centres) and allow RoIs under 1 pixel.
    reduction: "avg" (mean of the samples) or "max" (max over the bilinear samples; samples
    outside the map read 0). Returns [K, C, oh, ow] in input's dtype; with channels_last
    strides if input is channels_last, else contiguous.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be [N, C, H, W], got {tuple(input.shape)}")
    rois = boxes_to_rois(boxes)  # cast to the working dtype later: keep box precision
    levels = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
    return roi_align_levels(
        [input], rois, levels, output_size, [spatial_scale], sampling_ratio, aligned,
        reduction=reduction,
    )
