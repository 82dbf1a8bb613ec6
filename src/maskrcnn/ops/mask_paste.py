"""Paste per-RoI masks into full-image masks, vectorised over the masks.

Same result as torchvision.models.detection.roi_heads.paste_masks_in_image (padding 1):
each M x M mask is zero padded to P = M + 2, its box scaled by P / M about the centre and
truncated to int64, the padded mask resized bilinearly (align_corners=False) to the integer
box size (x2 - x1 + 1 by y2 - y1 + 1, at least 1) and written at the box, cropped by the
image.

How: only the pixels of each mask's visible box window are computed. Bilinear resizing is
separable: step x resamples every padded row at the window's columns ([G, P, span]); step y
blends, for each visible image row, two of those rows. Masks are grouped by window width
(powers of two) so padding each group to its widest window wastes little, all rows of a
group are flattened, and rows are processed in chunks to bound memory. The only Python
loops are over these groups and chunks.

Bit parity with torch's CPU resize kernel (float32): a build that contracts multiply-adds
(torch 2.14's AVX512 kernel here does) computes the source index as fma(scale, j + 0.5,
-0.5) and a * wa + b * wb as fma(a, wa, b * wb); outputs with out_h + out_w <= 128 go
through another kernel that sums four corner products left to right. Both are reproduced,
an fma emulated in float64 (where the product of two float32 is exact); whether this build
fuses is found once per device type by resizing a probe (`_calibrate`). Elsewhere (float64,
CUDA, other builds) results agree to rounding (~1e-7).

Pixels of a window outside the box get zero weights, so masks must be finite.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_SMALL_KERNEL_LIMIT = 128  # torch resizes outputs with h + w <= 128 with its 4-corner kernel
_CHUNK_ELEMENTS = 1 << 18  # window pixels computed at once (bounds temporary memory)


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Paste masks [N, M, M] (float, also [N, 1, M, M]) at boxes [N, 4] (xyxy) into
    images of image_size (h, w) -> [N, h, w] in the masks' dtype, zero outside the boxes."""
    return _paste(masks, boxes, image_size, threshold=None)


def paste_masks_thresholded(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """paste_masks(...) > threshold as bool [N, h, w], without the float image masks."""
    return _paste(masks, boxes, image_size, threshold=threshold)


class _Layout(NamedTuple):
    """Where each mask goes, all [N] int64."""

    x1: Tensor  # image column of the resized mask's first column (may be < 0)
    y1: Tensor
    width: Tensor  # size of the resized mask, >= 1
    height: Tensor
    win_x0: Tensor  # first image column of the visible part
    win_y0: Tensor
    win_w: Tensor  # size of the visible part, 0 when the box misses the image
    win_h: Tensor


def _paste(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None
           ) -> Tensor:
    if masks.dim() == 4:
        masks = masks[:, 0]  # [N, 1, M, M] -> [N, M, M]
    num_masks, mask_size = masks.shape[0], masks.shape[-1]
    height, width = int(image_size[0]), int(image_size[1])
    out_dtype = torch.bool if threshold is not None else masks.dtype
    out = torch.zeros((num_masks, height, width), dtype=out_dtype, device=masks.device)
    if num_masks == 0 or height == 0 or width == 0:
        return out
    work_dtype = masks.dtype if masks.dtype in (torch.float32, torch.float64) else torch.float32
    padded = F.pad(masks.to(work_dtype), (1, 1, 1, 1))  # [N, M, M] -> [N, M + 2, M + 2]
    int_boxes = _expand_boxes(boxes, mask_size)
    fused = work_dtype == torch.float32 and _torch_fuses_multiply_add(masks.device.type)
    _paste_int_boxes(out, padded, int_boxes, threshold, fused)
    return out


def _expand_boxes(boxes: Tensor, mask_size: int) -> Tensor:
    """Scale boxes [N, 4] by (M + 2) / M about their centres, truncate -> int64 [N, 4]."""
    scale = float(mask_size + 2) / mask_size
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    ctr_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    ctr_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), 1)
    return expanded.to(torch.int64)


def _layout(int_boxes: Tensor, height: int, width: int) -> _Layout:
    x1, y1, x2, y2 = int_boxes.unbind(1)
    win_x0, win_y0 = x1.clamp(min=0), y1.clamp(min=0)
    return _Layout(
        x1=x1,
        y1=y1,
        width=(x2 - x1 + 1).clamp(min=1),
        height=(y2 - y1 + 1).clamp(min=1),
        win_x0=win_x0,
        win_y0=win_y0,
        win_w=((x2 + 1).clamp(max=width) - win_x0).clamp(min=0),
        win_h=((y2 + 1).clamp(max=height) - win_y0).clamp(min=0),
    )


def _paste_int_boxes(out: Tensor, padded: Tensor, int_boxes: Tensor, threshold: float | None,
                     fused: bool) -> None:
    """Write padded masks [N, P, P] resized to int_boxes [N, 4] (inclusive) into out [N, H, W]."""
    lay = _layout(int_boxes, out.shape[1], out.shape[2])
    visible = (lay.win_w > 0) & (lay.win_h > 0)
    small = lay.width + lay.height <= _SMALL_KERNEL_LIMIT
    # group -1: torch's 4-corner kernel (windows < 128 px); else ceil(log2(window width))
    width_class = torch.ceil(torch.log2(lay.win_w.clamp(min=1).double())).to(torch.int64)
    group = torch.where(small, -1, width_class)
    for g in torch.unique(group[visible]).tolist():
        ids = torch.nonzero(visible & (group == g)).squeeze(1)
        _paste_group(out, padded, lay, ids, g < 0, threshold, fused)


def _paste_group(out: Tensor, padded: Tensor, lay: _Layout, ids: Tensor, small: bool,
                 threshold: float | None, fused: bool) -> None:
    """Paste masks `ids` [G]: a window of `span` columns per mask, all visible rows."""
    num_masks, height, width = out.shape
    size, dtype, device = padded.shape[-1], padded.dtype, padded.device
    win_h = lay.win_h[ids]
    span = int(lay.win_w[ids].max())
    # a span-wide column window per mask, shifted left where needed to stay in the image
    col0 = lay.win_x0[ids].clamp(max=width - span)  # [G]
    cols = col0[:, None] + torch.arange(span, device=device)  # [G, span] image columns
    ix0, ix1, wx0, wx1 = _taps(cols - lay.x1[ids, None], lay.width[ids, None], size, dtype, fused)

    # every visible image row of every mask, flattened: row -> (mask in group, image row)
    num_rows = int(win_h.sum())
    row_mask = torch.repeat_interleave(torch.arange(len(ids), device=device), win_h)  # [R]
    first_row = torch.cumsum(win_h, 0) - win_h  # [G] position of each mask's first row
    row_offset = torch.arange(num_rows, device=device) - first_row[row_mask]
    row_y = lay.win_y0[ids][row_mask] + row_offset  # [R] image row
    iy0, iy1, wy0, wy1 = _taps(row_y - lay.y1[ids][row_mask], lay.height[ids][row_mask], size,
                               dtype, fused)
    out_rows = out.view(num_masks * height, width)  # [N, H, W] -> [N*H, W]
    out_row_index = ids[row_mask] * height + row_y  # [R]

    masks = padded[ids]  # [G, P, P]
    if not small:  # step x for all P rows: [G, P, span]
        along_x = _blend(masks.gather(2, ix0[:, None].expand(-1, size, -1)), wx0[:, None],
                         masks.gather(2, ix1[:, None].expand(-1, size, -1)), wx1[:, None], fused)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // span)
    for start in range(0, num_rows, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        rm = row_mask[rows]
        if small:
            values = _four_corners(masks[rm, iy0[rows]], masks[rm, iy1[rows]], ix0[rm], ix1[rm],
                                   wx0[rm], wx1[rm], wy0[rows, None], wy1[rows, None], fused)
        else:  # step y: blend two resampled rows per output row -> [r, span]
            values = _blend(along_x[rm, iy0[rows]], wy0[rows, None],
                            along_x[rm, iy1[rows]], wy1[rows, None], fused)
        values = values > threshold if threshold is not None else values.to(out.dtype)
        out_rows[out_row_index[rows, None], cols[rm]] = values


def _taps(pos: Tensor, length: Tensor, size: int, dtype: torch.dtype, fused: bool
          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps of torch's resize (align_corners=False) of `size` samples to `length`.

    pos: int64 output index (any shape), length: int64 output size (broadcastable).
    Returns source indices i0, i1 (int64) and weights w0, w1 (dtype); zero weights where
    pos is outside [0, length).
    """
    inside = (pos >= 0) & (pos < length)
    pos = torch.minimum(pos.clamp(min=0), length - 1)
    length_f = length.to(dtype)
    ratio = torch.full_like(length_f, float(size)) / length_f  # a true division, as torch
    center = pos.to(dtype) + 0.5
    src = _fma(ratio, center, -0.5) if fused else ratio * center - 0.5
    src = src.clamp(min=0)
    i0 = src.to(torch.int64).clamp(max=size - 1)  # src >= 0: truncation is floor
    w1 = (src - i0.to(dtype)).clamp(0, 1)
    i1 = i0 + (i0 < size - 1).to(torch.int64)
    w0 = 1 - w1
    return i0, i1, torch.where(inside, w0, 0), torch.where(inside, w1, 0)


def _fma(a: Tensor, b: Tensor, c: Tensor | float) -> Tensor:
    """a * b + c rounded once to a's dtype (float32: exact product in float64)."""
    c64 = c.double() if isinstance(c, Tensor) else c
    return torch.add(a.double() * b.double(), c64).to(a.dtype)


def _blend(a: Tensor, wa: Tensor, b: Tensor, wb: Tensor, fused: bool) -> Tensor:
    """a * wa + b * wb, rounded as torch's kernel does: fma(a, wa, b * wb) when fused."""
    if fused:
        return torch.addcmul((b * wb).double(), a.double(), wa.double()).to(a.dtype)
    return a * wa + b * wb


def _four_corners(row0: Tensor, row1: Tensor, ix0: Tensor, ix1: Tensor, wx0: Tensor,
                  wx1: Tensor, wy0: Tensor, wy1: Tensor, fused: bool) -> Tensor:
    """torch's small-output kernel: sum of four corner products, left to right.

    row0, row1: [r, P] source rows; ix*, wx*: [r, span]; wy*: [r, 1] -> [r, span].
    """
    v00, v01 = row0.gather(1, ix0), row0.gather(1, ix1)
    v10, v11 = row1.gather(1, ix0), row1.gather(1, ix1)
    w00, w01, w10, w11 = wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1
    if not fused:
        return v00 * w00 + v01 * w01 + v10 * w10 + v11 * w11
    acc = _blend(v00, w00, v01, w01, fused)
    return _fma(v11, w11, _fma(v10, w10, acc))


def _torch_fuses_multiply_add(device_type: str) -> bool:
    """Whether torch's float32 bilinear resize on this device rounds like fused multiply-adds."""
    return _calibrate(device_type)[0]


@functools.cache
def _calibrate(device_type: str) -> tuple[bool, bool]:
    """(fused, exact): resize a probe with F.interpolate, see which of our two roundings
    matches it, and whether that one matches to the bit."""
    if device_type == "meta":
        return False, False
    size = 30
    probe = (torch.arange(size * size, dtype=torch.float64) * 0.6180339887).frac()
    probe = probe.to(device=device_type, dtype=torch.float32).reshape(1, size, size)
    mismatches = {True: 0, False: 0}
    for out_h, out_w in ((61, 97), (20, 131), (37, 53), (17, 23)):  # both kernels
        ref = F.interpolate(probe[None], size=(out_h, out_w), mode="bilinear",
                            align_corners=False)[0]
        box = torch.tensor([[0, 0, out_w - 1, out_h - 1]], device=probe.device)
        for fused in (True, False):
            ours = torch.zeros((1, out_h, out_w), device=probe.device)
            _paste_int_boxes(ours, probe, box, None, fused)
            mismatches[fused] += int((ours != ref).sum())
    fused = mismatches[True] < mismatches[False]
    return fused, mismatches[fused] == 0
