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

Several feature levels (FPN) are one product too: each RoI's weights point into its own
level's rows (``roi_align_levels``), so the pooled RoIs come out in their input order with
no gather or scatter afterwards. The rows of a channels_last level are a view, read in
place (S's columns on that level multiply it directly); NCHW levels are stacked into one
rows matrix, transposed once per call, or only the rows read where their RoIs read few of
a level's pixels (an unread level none).
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


IN_PLACE = "in place"  # a plan entry: a dense channels_last level, its rows read as a view
Plan = list  # per level: None (all rows, copied), sorted row indices (gathered), or IN_PLACE


def _level_rows(level: Tensor) -> Tensor:
    """[N, C, H, W] channels_last -> [N*H*W, C], a view."""
    n, c, h, w = level.shape
    return level.permute(0, 2, 3, 1).reshape(n * h * w, c)


def _stack_rows(features: tuple[Tensor, ...], plan: Plan) -> Tensor | None:
    """Channels-last rows of the levels that are not read in place, [sum_l rows_l, C]: all
    N*H_l*W_l rows of a level whose plan is None (a transposed copy), else only the rows
    listed (sorted indices into the level's N*H_l*W_l rows). None if every level is read
    in place."""
    stacked_levels = [(f, rows) for f, rows in zip(features, plan) if rows is not IN_PLACE]
    if not stacked_levels:
        return None
    c = features[0].shape[1]
    if len(stacked_levels) == 1 and stacked_levels[0][1] is None:  # [N, C, H, W] -> [NHW, C]
        return stacked_levels[0][0].permute(0, 2, 3, 1).contiguous().view(-1).view(-1, c)
    sizes = [f.shape[0] * f.shape[2] * f.shape[3] if rows is None else rows.numel()
             for f, rows in stacked_levels]
    stacked = features[0].new_empty((sum(sizes), c))
    for (f, rows), part in zip(stacked_levels, stacked.split(sizes)):
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
    grad_rows: Tensor, layouts: list[tuple[torch.Size, bool]], plan: Plan,
    in_place_grads: dict[int, Tensor],
) -> list[Tensor]:
    """Inverse of _stack_rows for gradients, in each level's own memory layout; the
    levels read in place take their rows' gradient (in_place_grads[level]) as a view."""
    stacked = [(shape, cl, rows) for (shape, cl), rows in zip(layouts, plan)
               if rows is not IN_PLACE]
    sizes = [shape[0] * shape[2] * shape[3] if rows is None else rows.numel()
             for shape, _, rows in stacked]
    parts = iter(grad_rows.split(sizes))
    grads = []
    for level, ((shape, channels_last), rows) in enumerate(zip(layouts, plan)):
        n, c, h, w = shape
        if rows is IN_PLACE:
            grads.append(in_place_grads[level].view(n, h, w, c).permute(0, 3, 1, 2))
            continue
        part = next(parts)
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
) -> tuple[list[list[tuple[int, Tensor]]], Plan]:
    """Which rows of each level the product reads, and S split by operand.

    A channels_last level is read in place (its rows are a view: no copy). Of the others,
    a level read at fewer than _GATHER_BELOW of its pixels gives only those rows (gathered,
    cheaper than transposing the whole map; none at all if unused), the rest are
    transposed whole. The stacked rows are operand 0, a level l read in place operand
    l + 1: each block of S becomes (operand, CSR block) parts, columns renumbered."""
    sizes = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
    used = torch.zeros(sum(sizes), dtype=torch.bool, device=features[0].device)
    for block in blocks:
        used[block.col_indices()] = True
    plan: Plan = []
    for f, used_level in zip(features, used.split(sizes)):
        if f.is_contiguous(memory_format=torch.channels_last):
            plan.append(IN_PLACE)
        elif int(used_level.sum()) < _GATHER_BELOW * used_level.numel():
            plan.append(used_level.nonzero().squeeze(1))
        else:
            plan.append(None)
    if all(rows is None for rows in plan):
        return [[(0, block)] for block in blocks], plan
    # old column -> (operand, column in that operand's rows)
    keep = torch.cat([u if torch.is_tensor(rows) else torch.full_like(u, rows is None)
                      for u, rows in zip(used.split(sizes), plan)])
    new_col = torch.cumsum(keep, 0) - 1  # stacked levels' columns
    operand = torch.zeros_like(new_col)
    widths = {0: int(keep.sum())}
    for level, (cols, rows) in enumerate(zip(new_col.split(sizes), operand.split(sizes))):
        if plan[level] is IN_PLACE:  # views into new_col / operand: set in place
            cols.copy_(torch.arange(sizes[level], device=cols.device))
            rows.fill_(level + 1)
            widths[level + 1] = sizes[level]
    return [_split_columns(block, operand, new_col, widths) for block in blocks], plan


def _split_columns(block: Tensor, operand: Tensor, new_col: Tensor,
                   widths: dict[int, int]) -> list[tuple[int, Tensor]]:
    """A CSR block -> (operand, CSR block) parts, each entry in its operand's columns; at
    least one part (an empty block stays one empty part)."""
    counts, cols, vals = block.crow_indices().diff(), block.col_indices(), block.values()
    ops = take(operand, cols)
    seen = torch.bincount(ops, minlength=max(widths) + 1)  # entries per operand (no sort)
    present = seen.nonzero().squeeze(1).tolist() or [0]
    if len(present) == 1:
        return [(present[0], csr(counts, take(new_col, cols), vals,
                                 (block.shape[0], widths[present[0]])))]
    rows = repeat_index(counts, cols.numel())
    parts = []
    for op in present:
        mask = ops == op
        part_counts = torch.bincount(rows[mask], minlength=block.shape[0])
        parts.append((op, csr(part_counts, take(new_col, cols[mask]), vals[mask],
                              (block.shape[0], widths[op]))))
    return parts


class _BinMix(torch.autograd.Function):
    """out[R, C] = S @ rows(features) for constant sparse blocks S; grad = S^T @ grad_out."""

    @staticmethod
    def forward(ctx, blocks: list[list[tuple[int, Tensor]]], plan: Plan,  # type: ignore[override]
                *features: Tensor) -> Tensor:
        operands = {0: _stack_rows(features, plan)}  # [rows read, C] (None: all in place)
        for level, rows in enumerate(plan):
            if rows is IN_PLACE:
                operands[level + 1] = _level_rows(features[level])
        ctx.blocks, ctx.plan = blocks, plan
        ctx.layouts = [(f.shape, f.is_contiguous(memory_format=torch.channels_last))
                       for f in features]
        ctx.widths = {op: rows.shape[0] if rows is not None else 0
                      for op, rows in operands.items()}
        c = features[0].shape[1]
        out = features[0].new_empty((sum(parts[0][1].shape[0] for parts in blocks), c))
        for parts, out_part in zip(blocks, out.split([p[0][1].shape[0] for p in blocks])):
            parts = [(op, block) for op, block in parts if block.values().numel()]
            if not parts:  # RoIs without samples (degenerate boxes): zeros
                out_part.zero_()
            for i, (op, block) in enumerate(parts):
                _product(block, operands[op], out_part, transpose=False, add=i > 0)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad = grad.contiguous()
        grad_rows: dict[int, Tensor] = {}  # operand -> [its rows, C]
        out_parts = grad.split([p[0][1].shape[0] for p in ctx.blocks])
        for parts, out_part in zip(ctx.blocks, out_parts):
            for op, block in parts:
                if not block.values().numel():
                    continue
                add = op in grad_rows
                if not add:
                    grad_rows[op] = grad.new_empty((ctx.widths[op], grad.shape[1]))
                _product(block, out_part, grad_rows[op], transpose=True, add=add)
        for op, width in ctx.widths.items():  # an operand no entry read: zero gradient
            if op not in grad_rows:
                grad_rows[op] = grad.new_zeros((width, grad.shape[1]))
        in_place = {op - 1: rows for op, rows in grad_rows.items() if op > 0}
        return (None, None, *_unstack_rows(grad_rows[0], ctx.layouts, ctx.plan, in_place))


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
