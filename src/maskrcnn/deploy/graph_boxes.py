"""Box arithmetic and ragged-to-padded helpers in ONNX, with the eager model's operation
order (maskrcnn.ops.box_coder, maskrcnn.ops.boxes) so that results agree to rounding."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .onnx_builder import BOOL, INT64, GraphBuilder

BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def decode_boxes(g: GraphBuilder, deltas: str, boxes: str, weights: Sequence[float],
                 clip: float = BBOX_XFORM_CLIP) -> str:
    """BoxCoder.decode: deltas [..., 4] applied to boxes [..., 4] (broadcast) -> [..., 4]."""
    x1, y1, x2, y2 = g.split_last(boxes, 4)
    widths, heights = g.op("Sub", x2, x1), g.op("Sub", y2, y1)
    ctr_x = g.op("Add", x1, g.op("Mul", widths, 0.5))
    ctr_y = g.op("Add", y1, g.op("Mul", heights, 0.5))
    dx, dy, dw, dh = (g.op("Div", d, float(w)) for d, w in zip(g.split_last(deltas, 4), weights))
    dw, dh = g.min(dw, np.float32(clip)), g.min(dh, np.float32(clip))
    pred_x = g.op("Add", g.op("Mul", dx, widths), ctr_x)
    pred_y = g.op("Add", g.op("Mul", dy, heights), ctr_y)
    half_w = g.op("Mul", g.op("Mul", g.op("Exp", dw), widths), 0.5)
    half_h = g.op("Mul", g.op("Mul", g.op("Exp", dh), heights), 0.5)
    return g.stack_last([g.op("Sub", pred_x, half_w), g.op("Sub", pred_y, half_h),
                         g.op("Add", pred_x, half_w), g.op("Add", pred_y, half_h)])


def clip_boxes(g: GraphBuilder, boxes: str, height: str, width: str) -> str:
    """Clamp boxes [..., 4] to [0, width] x [0, height]; height, width broadcast against
    the boxes' leading axes (e.g. [B, 1] for boxes [B, N, 4])."""
    x1, y1, x2, y2 = g.split_last(boxes, 4)
    clamp_x = [g.min(g.max(x, 0.0), width) for x in (x1, x2)]
    clamp_y = [g.min(g.max(y, 0.0), height) for y in (y1, y2)]
    return g.stack_last([clamp_x[0], clamp_y[0], clamp_x[1], clamp_y[1]])


def box_sizes(g: GraphBuilder, boxes: str) -> tuple[str, str]:
    """(widths, heights) of boxes [..., 4] -> [...] each."""
    x1, y1, x2, y2 = g.split_last(boxes, 4)
    return g.op("Sub", x2, x1), g.op("Sub", y2, y1)


def not_small(g: GraphBuilder, boxes: str, min_size: float) -> str:
    """bool [...]: width and height of boxes [..., 4] both >= min_size."""
    widths, heights = box_sizes(g, boxes)
    size = np.float32(min_size)
    return g.op("And", g.op("GreaterOrEqual", widths, size),
                g.op("GreaterOrEqual", heights, size))


def rank_in_group(g: GraphBuilder, group: str, num_groups: str) -> tuple[str, str]:
    """For group ids [S] int64 in [0, G): each entry's position among the earlier entries
    of its group [S], and the size of every group [G]. num_groups: int64 [1]."""
    ids = g.unsqueeze(g.arange(num_groups), [0])  # [1, G]
    one_hot = g.cast(g.op("Equal", g.unsqueeze(group, [1]), ids), INT64)  # [S, G]
    earlier = g.op("CumSum", one_hot, np.int64(0), exclusive=1)  # [S, G]
    position = g.op("GatherElements", earlier, g.unsqueeze(group, [1]), axis=1)  # [S, 1]
    return g.squeeze(position, [1]), g.reduce("ReduceSum", one_hot, [0])


def pad_groups(g: GraphBuilder, group: str, num_groups: str, values: Sequence[str],
               fills: Sequence[float | int]) -> tuple[list[str], str]:
    """Scatter ragged rows into padded [G, M] tensors, M the largest group (at least 1).

    group: [S] int64; values: tensors [S] each; fills: the padding value of each.
    Returns the padded tensors [G, M] and a bool [G, M] mask of the filled places.
    """
    position, counts = rank_in_group(g, group, num_groups)
    width = g.max(g.reduce("ReduceMax", counts, [0], keepdims=True), np.array([1], np.int64))
    shape = g.concat([num_groups, width], axis=0)  # [2]
    index = g.stack_last([group, position])  # [S, 2]
    padded = []
    for value, fill in zip(values, fills):
        dtype = np.int64 if isinstance(fill, int) else np.float32
        base = g.op("Expand", np.array(fill, dtype), shape)
        padded.append(g.op("ScatterND", base, index, value))
    ones = g.op("Expand", np.int64(1), g.dim(group, 0))
    filled = g.op("ScatterND", g.op("Expand", np.int64(0), shape), index, ones)
    return padded, g.cast(filled, BOOL)


def gather_rows(g: GraphBuilder, x: str, index: str) -> str:
    """x [B, N, ...] and index [B, M] -> [B, M, ...] (per batch row)."""
    return g.op("GatherND", x, g.unsqueeze(index, [2]), batch_dims=1)
