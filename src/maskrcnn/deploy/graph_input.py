"""Pre-processing in ONNX, as maskrcnn.modeling.transform does it: normalise, resize each
image of the batch to the test size, zero-pad the batch to a multiple of size_divisible.

Images of different sizes arrive padded in one [B, 3, H, W] tensor with their sizes in
`image_sizes`; each is resized with its own scale by one GridSample whose sample points
are torch's bilinear source coordinates (align_corners=False, clamped to the image: the
edge pixels repeat as in F.interpolate, and nothing is read from the padding).
"""

from __future__ import annotations

import numpy as np

from ..config import InputConfig
from .onnx_builder import FLOAT, GraphBuilder


def normalize(g: GraphBuilder, images: str, cfg: InputConfig) -> str:
    """[B, 3, H, W] RGB in [0, 1] -> scaled, reordered, (x - mean) / std."""
    x = images
    if cfg.pixel_scale != 1.0:
        x = g.op("Mul", x, np.float32(cfg.pixel_scale))
    if cfg.channel_order == "BGR":
        x = g.gather(x, np.array([2, 1, 0], np.int64), axis=1)
    mean = np.asarray(cfg.pixel_mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(cfg.pixel_std, np.float32).reshape(1, 3, 1, 1)
    return g.op("Div", g.op("Sub", x, mean), std)


def _padded_length(g: GraphBuilder, lengths: str, divisor: int) -> str:
    """The largest of lengths [B] rounded up to a multiple of divisor -> int64 [1]."""
    longest = g.reduce("ReduceMax", lengths, [0], keepdims=True)
    blocks = g.divmod_int(g.op("Add", longest, np.int64(divisor - 1)), np.int64(divisor))[0]
    return g.op("Mul", blocks, np.int64(divisor))


def _sample_coordinates(g: GraphBuilder, in_lengths: str, out_lengths: str, canvas: str,
                        input_length: str) -> str:
    """GridSample coordinates [B, canvas] along one axis: output pixel d of image b reads
    source pixel clamp(in/out * (d + 0.5) - 0.5, 0, in - 1); beyond out: outside (zeros)."""
    d = g.unsqueeze(g.arange(canvas, FLOAT), [0])  # [1, C]
    in_f = g.unsqueeze(g.cast(in_lengths, FLOAT), [1])  # [B, 1]
    out_f = g.unsqueeze(g.cast(out_lengths, FLOAT), [1])
    source = g.op("Sub", g.op("Mul", g.op("Div", in_f, out_f), g.op("Add", d, 0.5)), 0.5)
    source = g.min(g.max(source, 0.0), g.op("Sub", in_f, 1.0))  # [B, C]
    length = g.cast(input_length, FLOAT)
    grid = g.op("Sub", g.op("Div", g.op("Add", g.op("Mul", source, 2.0), 1.0), length), 1.0)
    return g.where(g.op("Less", d, out_f), grid, np.float32(-3.0))


def resize_and_pad(g: GraphBuilder, normalized: str, image_sizes: str, resized: str,
                   size_divisible: int) -> str:
    """normalized [B, 3, H, W], image_sizes and resized int64 [B, 2] -> canvas
    [B, 3, Hc, Wc], Hc and Wc the largest resized sizes rounded up to size_divisible."""
    in_h, in_w = g.split_last(image_sizes, 2)
    out_h, out_w = g.split_last(resized, 2)
    canvas_h = _padded_length(g, out_h, size_divisible)
    canvas_w = _padded_length(g, out_w, size_divisible)
    grid_y = _sample_coordinates(g, in_h, out_h, canvas_h, g.dim(normalized, 2))  # [B, Hc]
    grid_x = _sample_coordinates(g, in_w, out_w, canvas_w, g.dim(normalized, 3))  # [B, Wc]
    shape = g.concat([g.dim(normalized, 0), canvas_h, canvas_w, np.array([1], np.int64)], 0)
    grid = g.concat([g.op("Expand", g.unsqueeze(grid_x, [1, 3]), shape),  # [B, 1, Wc, 1]
                     g.op("Expand", g.unsqueeze(grid_y, [2, 3]), shape)], axis=3)
    mode = "linear" if g.opset >= 20 else "bilinear"
    return g.op("GridSample", normalized, grid, mode=mode, padding_mode="zeros",
                align_corners=0)


def boxes_to_original(g: GraphBuilder, boxes: str, batch_index: str, image_sizes: str,
                      resized: str) -> str:
    """Scale boxes [N, 4] of the resized images back to the input sizes (resize_boxes)."""
    ratio = g.op("Div", g.cast(image_sizes, FLOAT), g.cast(resized, FLOAT))  # [B, 2] (h, w)
    ratio = g.gather(ratio, batch_index)  # [N, 2]
    ratio = g.gather(ratio, np.array([1, 0, 1, 0], np.int64), axis=1)  # [N, 4] (w, h, w, h)
    return g.op("Mul", boxes, ratio)
