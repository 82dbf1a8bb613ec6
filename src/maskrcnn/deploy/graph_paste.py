"""Mask pasting in ONNX: maskrcnn.ops.mask_paste (torchvision's paste_masks_in_image) as two
batched matrix products per mask.

Each M x M mask is zero padded to P = M + 2, its box scaled by P / M and truncated to
integers; the bilinear resize of the padded mask to the integer box is separable, so the
pasted mask is Wy [H, P] @ mask [P, P] @ Wx^T [P, W], where row y of Wy holds the two
bilinear weights of image row y (zero outside the box and outside the image).
"""

from __future__ import annotations

import numpy as np

from .graph_boxes import box_sizes
from .metadata import MAX_SIDE
from .onnx_builder import FLOAT, INT64, GraphBuilder


def _expand_boxes(g: GraphBuilder, boxes: str, mask_size: int) -> str:
    """Boxes [N, 4] scaled by (M + 2) / M about their centres, truncated -> int64 [N, 4]."""
    scale = float(mask_size + 2) / mask_size
    x1, y1, x2, y2 = g.split_last(boxes, 4)
    widths, heights = box_sizes(g, boxes)
    half_w = g.op("Mul", g.op("Mul", widths, 0.5), scale)
    half_h = g.op("Mul", g.op("Mul", heights, 0.5), scale)
    ctr_x = g.op("Mul", g.op("Add", x2, x1), 0.5)
    ctr_y = g.op("Mul", g.op("Add", y2, y1), 0.5)
    expanded = [g.op("Sub", ctr_x, half_w), g.op("Sub", ctr_y, half_h),
                g.op("Add", ctr_x, half_w), g.op("Add", ctr_y, half_h)]
    return g.cast(g.stack_last(expanded), INT64)


def _scale_table(padded_size: int) -> np.ndarray:
    """float32 P / length for every length up to the largest expanded box: a look-up gives
    torch's correctly rounded quotient (OpenVINO divides by multiplying by a reciprocal,
    which moves the bilinear weights by an ulp and flips pixels at the threshold)."""
    lengths = np.arange(int(MAX_SIDE * 1.1) + 64, dtype=np.float32)
    lengths[0] = 1.0
    return np.float32(padded_size) / lengths


def _axis_weights(g: GraphBuilder, start: str, end: str, canvas: str, limit: str,
                  padded_size: int) -> str:
    """Bilinear weights [N, canvas, P] along one axis of masks resized to the integer
    ranges start..end (inclusive, [N] int64) of an image limit [N] pixels long."""
    length = g.max(g.op("Add", g.op("Sub", end, start), np.int64(1)), np.int64(1))  # [N]
    pixels = g.unsqueeze(g.arange(canvas), [0])  # [1, C]
    local = g.op("Sub", pixels, g.unsqueeze(start, [1]))  # [N, C]
    inside = g.op("And", g.op("GreaterOrEqual", local, np.int64(0)),
                  g.op("Less", local, g.unsqueeze(length, [1])))
    inside = g.op("And", inside, g.op("Less", pixels, g.unsqueeze(limit, [1])))
    scale = g.gather(_scale_table(padded_size), g.unsqueeze(length, [1]))  # [N, 1]
    source = g.op("Sub", g.op("Mul", scale, g.op("Add", g.cast(local, FLOAT), 0.5)), 0.5)
    source = g.max(source, 0.0)  # [N, C]
    first = g.op("Floor", source)
    weight_next = g.op("Sub", source, first)
    first = g.cast(first, INT64)
    following = g.min(g.op("Add", first, np.int64(1)), np.int64(padded_size - 1))
    taps = np.arange(padded_size, dtype=np.int64)  # [P]
    one_hot = [g.cast(g.op("Equal", g.unsqueeze(i, [2]), taps), FLOAT)
               for i in (first, following)]  # [N, C, P] each
    weights = g.op("Add",
                   g.op("Mul", one_hot[0], g.unsqueeze(g.op("Sub", 1.0, weight_next), [2])),
                   g.op("Mul", one_hot[1], g.unsqueeze(weight_next, [2])))
    return g.op("Mul", weights, g.unsqueeze(g.cast(inside, FLOAT), [2]))


def paste_masks(g: GraphBuilder, probs: str, boxes: str, batch_index: str,
                image_sizes: str, canvas_hw: str, threshold: str, mask_size: int) -> str:
    """probs [N, M, M] at boxes [N, 4] (input pixels) -> bool [N, H, W] masks, (H, W) =
    canvas_hw, the padded input batch; zero outside each image's own size."""
    padded_size = mask_size + 2
    padded = g.op("Pad", probs, np.array([0, 1, 1, 0, 1, 1], np.int64))  # [N, P, P]
    x1, y1, x2, y2 = g.split_last(_expand_boxes(g, boxes, mask_size), 4)
    sizes = g.gather(image_sizes, batch_index)  # [N, 2] (h, w)
    height_limit = g.gather(sizes, np.int64(0), axis=1)
    width_limit = g.gather(sizes, np.int64(1), axis=1)
    canvas_h = g.gather(canvas_hw, np.array([0], np.int64))
    canvas_w = g.gather(canvas_hw, np.array([1], np.int64))
    rows = _axis_weights(g, y1, y2, canvas_h, height_limit, padded_size)  # [N, H, P]
    cols = _axis_weights(g, x1, x2, canvas_w, width_limit, padded_size)  # [N, W, P]
    pasted = g.op("MatMul", g.op("MatMul", rows, padded),
                  g.op("Transpose", cols, perm=[0, 2, 1]))  # [N, H, W]
    return g.op("Greater", pasted, threshold)
