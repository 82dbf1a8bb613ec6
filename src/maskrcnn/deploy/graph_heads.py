"""RoI pooling, box detections and mask probabilities in ONNX (maskrcnn.modeling.poolers,
BoxHead.inference, MaskHead.inference)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..config import RoIHeadsConfig
from .graph_boxes import box_sizes, clip_boxes, decode_boxes, not_small
from .onnx_builder import FLOAT, INT64, GraphBuilder


def roi_align_levels(g: GraphBuilder, cfg: RoIHeadsConfig, features: Sequence[str],
                     scales: Sequence[float], channels: int, rois: str, batch_index: str,
                     output_size: int) -> str:
    """Multi-level RoIAlign: rois [K, 4] of images batch_index [K] -> [K, C, m, m], each
    RoI pooled (ONNX RoiAlign, average) from its FPN level k = floor(k0 + log2(sqrt(wh) /
    224) + 1e-6), clamped to the levels present."""
    k_min = round(-math.log2(scales[0]))
    widths, heights = box_sizes(g, rois)
    log2 = g.op("Div", g.op("Log", g.op("Div", g.op("Sqrt", g.op("Mul", widths, heights)),
                                         float(cfg.canonical_box_size))), math.log(2.0))
    k = g.op("Floor", g.op("Add", g.op("Add", log2, float(cfg.canonical_level)), 1e-6))
    k = g.min(g.max(k, float(k_min)), float(k_min + len(scales) - 1))
    level = g.op("Sub", g.cast(k, INT64), np.int64(k_min))  # [K]
    shape = g.concat([g.dim(rois, 0), np.array([channels, output_size, output_size])], 0)
    pooled = g.op("ConstantOfShape", shape, value=_float_tensor(0.0))
    mode = "half_pixel" if cfg.aligned else "output_half_pixel"
    for index, (feature, scale) in enumerate(zip(features, scales)):
        members = g.op("NonZero", g.op("Equal", level, np.int64(index)))  # [1, K_l]
        members = g.squeeze(members, [0])
        pooled_level = g.op(
            "RoiAlign", feature, g.gather(rois, members), g.gather(batch_index, members),
            mode="avg", output_height=output_size, output_width=output_size,
            sampling_ratio=max(cfg.sampling_ratio, 0), spatial_scale=float(scale),
            coordinate_transformation_mode=mode)
        pooled = g.op("ScatterND", pooled, g.unsqueeze(members, [1]), pooled_level)
    return pooled


def _float_tensor(value: float):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array([value], np.float32))


def box_detections(g: GraphBuilder, cfg: RoIHeadsConfig, class_logits: str, box_deltas: str,
                   proposals: str, proposal_valid: str, heights: str, widths: str,
                   score_threshold: str) -> tuple[str, str, str, str]:
    """Detections of every image, best first within an image, images in order.

    class_logits [B*P, K], box_deltas [B*P, K*4] of proposals [B, P, 4]; heights, widths
    float [B, 1]. Per image: boxes of every (proposal, class) above the score threshold,
    clipped, small ones dropped, class-wise NMS (boxes of each class offset as in
    torchvision's batched_nms), the best detections_per_image.
    Returns boxes [N, 4], scores [N], labels [N] int64 (>= 1), batch index [N] int64.
    """
    num_classes = cfg.num_classes
    batch_shape = g.shape(proposals, 0, 2)  # [B, P]
    scores = g.op("Softmax", class_logits, axis=-1)
    scores = g.reshape(scores, g.concat([batch_shape, np.array([num_classes])], 0))
    scores = g.slice(scores, 1, num_classes, axis=2)  # [B, P, K-1] (no background)
    deltas = g.reshape(box_deltas, g.concat([batch_shape, np.array([num_classes, 4])], 0))
    deltas = g.slice(deltas, 1, num_classes, axis=2)  # [B, P, K-1, 4]
    boxes = decode_boxes(g, deltas, g.unsqueeze(proposals, [2]), cfg.box_coder_weights)
    boxes = clip_boxes(g, boxes, g.unsqueeze(heights, [2]), g.unsqueeze(widths, [2]))
    valid = g.op("And", g.unsqueeze(proposal_valid, [2]),
                 g.op("Greater", scores, score_threshold))
    valid = g.op("And", valid, not_small(g, boxes, 1e-2))  # [B, P, K-1]

    flat = g.concat([g.dim(proposals, 0), np.array([-1])], 0)  # [B, N], N = P * (K-1)
    boxes = g.reshape(boxes, g.concat([flat, np.array([4])], 0))
    scores, valid = g.reshape(scores, flat), g.reshape(valid, flat)
    # [N]: candidates are (proposal, class) in row-major order
    labels = g.op("Tile", np.arange(1, num_classes, dtype=np.int64), g.dim(proposals, 1))
    # class-wise NMS by offsetting each class's boxes past the image's largest coordinate
    largest = g.reduce("ReduceMax", g.where(g.unsqueeze(valid, [2]), boxes, np.float32(0.0)),
                       [1, 2], keepdims=True)  # [B, 1, 1]
    offsets = g.op("Mul", g.unsqueeze(g.cast(labels, FLOAT), [1]), g.op("Add", largest, 1.0))
    nms_scores = g.unsqueeze(g.where(valid, scores, np.float32(-1.0)), [1])  # [B, 1, N]
    selected = g.op("NonMaxSuppression", g.op("Add", boxes, offsets), nms_scores,
                    np.array([cfg.detections_per_image], np.int64),
                    np.array([cfg.nms_thresh], np.float32), np.array([-0.5], np.float32))
    image = g.gather(selected, np.int64(0), axis=1)  # [S]
    candidate = g.gather(selected, np.int64(2), axis=1)
    pairs = g.stack_last([image, candidate])  # [S, 2]
    return (g.op("GatherND", boxes, pairs), g.op("GatherND", scores, pairs),
            g.gather(labels, candidate), image)


def mask_probabilities(g: GraphBuilder, cfg: RoIHeadsConfig, mask_logits: str,
                       labels: str) -> str:
    """[D, K, M, M] logits -> [D, M, M] probabilities of each detection's class."""
    if cfg.mask_loss == "softmax":
        probs = g.op("Softmax", mask_logits, axis=1)
    else:
        probs = g.op("Sigmoid", mask_logits)
    channel = g.op("Mul", labels, np.int64(0)) if cfg.class_agnostic_mask else labels
    return g.op("GatherND", probs, g.unsqueeze(channel, [1]), batch_dims=1)
