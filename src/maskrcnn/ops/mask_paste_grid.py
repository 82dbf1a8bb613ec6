"""detectron2's mask pasting (its layers/mask_ops.paste_masks_in_image), and the choice
between it and torchvision's (`roi_heads.mask_paste`, `paste_masks_as`).

Each image pixel (x, y) samples its mask at its centre mapped into the float box (x0, y0,
x1, y1): gx = (x + 0.5 - x0) / (x1 - x0) * 2 - 1 (gy alike), bilinearly, with F.grid_sample
(align_corners=False, zero padding). The M x M mask covers the box exactly, one cell per
(x1 - x0) / M pixels, and fades to zero within half a cell outside it. The grid is computed
in float32 in detectron2's order, so values equal its own bit for bit.

Thresholding keeps `prob >= threshold`, detectron2's rule, where torchvision's pasting and
structures.binarize_masks keep `prob > threshold`: only pixels exactly at the threshold
differ, and with >= the output equals detectron2's.

How: only each mask's support is sampled (the pixels whose centres lie within half a cell of
its box, plus 1 px; clipped to the image). Masks are grouped by support size (powers of two
per axis), padded to their group's largest, and sampled in chunks of at most
_CHUNK_PIXELS pixels (a tall support in bands of rows), so no [N, H, W] float tensor but the
output is built. detectron2's CPU path samples floor(x0) - 1 .. ceil(x1) + 1 only; its
values beyond that are below half the edge cell's, so at thresholds >= 0.5 its masks equal
ours, and ours equal its GPU path (the whole image) at every threshold. Pixels outside the
support stay 0 / False. Boxes that are empty or not finite paste nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .mask_paste import paste_masks, paste_masks_thresholded

MASK_PASTE_MODES = ("torchvision", "detectron2")
_CHUNK_PIXELS = 1 << 18  # pixels sampled per grid_sample call (bounds temporary memory)


def paste_masks_grid_sample(masks: Tensor, boxes: Tensor, image_size: tuple[int, int],
                            threshold: float | None = None) -> Tensor:
    """Paste masks [N, M, M] (float probabilities, also [N, 1, M, M]) at float boxes [N, 4]
    (xyxy) into images of image_size (h, w) as detectron2 does -> [N, h, w]: the masks'
    dtype when threshold is None, else bool (prob >= threshold)."""
    if masks.dim() == 4:
        masks = masks[:, 0]  # [N, 1, M, M] -> [N, M, M]
    num_masks = masks.shape[0]
    height, width = int(image_size[0]), int(image_size[1])
    out_dtype = torch.bool if threshold is not None else masks.dtype
    out = torch.zeros((num_masks, height, width), dtype=out_dtype, device=masks.device)
    if num_masks == 0 or height == 0 or width == 0:
        return out
    dtype = torch.float64 if masks.dtype == torch.float64 else torch.float32
    with torch.autocast(masks.device.type, enabled=False):
        masks = masks.to(dtype)[:, None]  # [N, 1, M, M]
        boxes = boxes.to(masks.device, dtype)
        x_first, x_end = _support(boxes[:, 0], boxes[:, 2], masks.shape[-1], width)
        y_first, y_end = _support(boxes[:, 1], boxes[:, 3], masks.shape[-2], height)
        span_x, span_y = x_end - x_first, y_end - y_first  # [N]
        visible = (span_x > 0) & (span_y > 0)
        group = _size_class(span_x) * 64 + _size_class(span_y)
        for g in torch.unique(group[visible]).tolist():
            ids = torch.nonzero(visible & (group == g)).squeeze(1)
            cols = _window(x_first[ids], int(span_x[ids].max()), width)  # [G, w]
            rows = _window(y_first[ids], int(span_y[ids].max()), height)  # [G, h]
            per_chunk = max(1, _CHUNK_PIXELS // (cols.shape[1] * rows.shape[1]))
            band = max(1, _CHUNK_PIXELS // cols.shape[1])  # rows per call for one mask
            for start in range(0, len(ids), per_chunk):
                part = slice(start, start + per_chunk)
                for row0 in range(0, rows.shape[1], band):
                    _paste_chunk(out, masks, boxes, ids[part], rows[part, row0:row0 + band],
                                 cols[part], threshold)
    return out


def paste_masks_as(mode: str, masks: Tensor, boxes: Tensor, image_size: tuple[int, int],
                   threshold: float | None = None) -> Tensor:
    """Paste as `roi_heads.mask_paste` says: "torchvision" (ops/mask_paste.py, prob >
    threshold) or "detectron2" (paste_masks_grid_sample, prob >= threshold); float [N, h, w]
    when threshold is None, else bool."""
    check_mask_paste(mode)
    if mode == "detectron2":
        return paste_masks_grid_sample(masks, boxes, image_size, threshold)
    if threshold is None:
        return paste_masks(masks, boxes, image_size)
    return paste_masks_thresholded(masks, boxes, image_size, threshold)


def check_mask_paste(mode: str) -> None:
    if mode not in MASK_PASTE_MODES:
        raise ValueError(f"unknown roi_heads.mask_paste {mode!r}; choose one of "
                         f"{', '.join(MASK_PASTE_MODES)}")


def _support(lo: Tensor, hi: Tensor, cells: int, limit: int) -> tuple[Tensor, Tensor]:
    """Pixels [first, end) (int64 [N]) whose centres a mask of `cells` cells over [lo, hi]
    reaches: half a cell beyond the box, 1 px more (rounding; detectron2's margin)."""
    half_cell = (hi - lo) / (2 * cells)
    first = (torch.floor(lo - half_cell) - 1).clamp(0, limit)
    end = (torch.ceil(hi + half_cell) + 1).clamp(0, limit)
    usable = torch.isfinite(lo) & torch.isfinite(hi) & (hi > lo)
    return (torch.where(usable, first, 0).to(torch.int64),
            torch.where(usable, end, 0).to(torch.int64))


def _size_class(span: Tensor) -> Tensor:
    """ceil(log2(span)) (int64), spans >= 1."""
    return torch.ceil(torch.log2(span.clamp(min=1).double())).to(torch.int64)


def _window(first: Tensor, span: int, limit: int) -> Tensor:
    """`span` consecutive pixels from each `first` [G], shifted back to end inside the image
    -> int64 [G, span]. Extra pixels are sampled too (zero beyond a mask's support)."""
    start = first.clamp(max=limit - span)
    return start[:, None] + torch.arange(span, device=first.device)


def _paste_chunk(out: Tensor, masks: Tensor, boxes: Tensor, ids: Tensor, rows: Tensor,
                 cols: Tensor, threshold: float | None) -> None:
    """Sample masks `ids` [n] at image rows [n, h] x columns [n, w] into out [N, H, W]."""
    n, h, w = len(ids), rows.shape[1], cols.shape[1]
    x0, y0, x1, y1 = boxes[ids].unbind(1)  # [n] each
    gx = _normalised(cols, x0, x1, masks.dtype)[:, None, :].expand(n, h, w)
    gy = _normalised(rows, y0, y1, masks.dtype)[:, :, None].expand(n, h, w)
    grid = torch.stack((gx, gy), dim=3)  # [n, h, w, 2]
    values = F.grid_sample(masks[ids], grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)[:, 0]  # [n, h, w]
    if threshold is not None:
        values = values >= threshold
    height, width = out.shape[1:]
    flat = (ids[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
    out.view(-1)[flat.reshape(-1)] = values.reshape(-1).to(out.dtype)


def _normalised(pixels: Tensor, lo: Tensor, hi: Tensor, dtype: torch.dtype) -> Tensor:
    """Pixel centres [n, k] in grid_sample's coordinates of the boxes [lo, hi] ([n] each),
    in detectron2's order of operations; clamped to [-2, 2] (beyond +-1 - 1/M is zero)."""
    centres = pixels.to(dtype) + 0.5
    grid = (centres - lo[:, None]) / (hi - lo)[:, None] * 2 - 1
    return grid.clamp(-2, 2)
