"""Anchors and RPN proposals in ONNX (maskrcnn.modeling.anchors and RPN.inference).

Per image: the top pre_nms_top_n anchors of every level, decoded, clipped, small and
low-score boxes dropped, NMS per level (NonMaxSuppression with one class per level, so
levels never suppress each other), then the post_nms_top_n best across levels. The result
stays padded, [B, P, 4] with a validity mask, P the largest count of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import AnchorConfig, RPNConfig
from ..modeling.anchors import cell_anchors
from .graph_boxes import clip_boxes, decode_boxes, gather_rows, not_small, pad_groups
from .onnx_builder import FLOAT, GraphBuilder

_INVALID = -1.0  # score given to removed boxes; NMS keeps scores above -0.5 only


def level_anchors(g: GraphBuilder, cfg: AnchorConfig, level: int, stride: int, feature: str,
                  canvas: str) -> str:
    """Anchors [H_l * W_l * A, 4] of one level in (y, x, anchor) order."""
    cells = cell_anchors(cfg.sizes[level], cfg.aspect_ratios, cfg.round_cell_anchors)
    grid_h, grid_w = g.dim(feature, 2), g.dim(feature, 3)
    if cfg.strides_from_grid:  # torchvision: padded image size // grid size
        stride_y = g.divmod_int(g.dim(canvas, 2), grid_h)[0]
        stride_x = g.divmod_int(g.dim(canvas, 3), grid_w)[0]
    else:
        stride_y = stride_x = np.array([stride], np.int64)
    shift_x = g.cast(g.op("Mul", g.arange(grid_w), stride_x), FLOAT)  # [W]
    shift_y = g.cast(g.op("Mul", g.arange(grid_h), stride_y), FLOAT)  # [H]
    grid = g.concat([grid_h, grid_w], axis=0)
    xs = g.op("Expand", g.unsqueeze(shift_x, [0]), grid)  # [H, W]
    ys = g.op("Expand", g.unsqueeze(shift_y, [1]), grid)
    shifts = g.reshape(g.stack_last([xs, ys, xs, ys]), np.array([-1, 1, 4], np.int64))
    # [HW, 1, 4] + [1, A, 4] -> [HW * A, 4]
    anchors = g.op("Add", shifts, cells.numpy()[None].astype(np.float32))
    return g.reshape(anchors, np.array([-1, 4], np.int64))


def proposals(g: GraphBuilder, cfg: RPNConfig, anchor_cfg: AnchorConfig,
              strides: Sequence[int], features: Sequence[str], logits: Sequence[str],
              deltas: Sequence[str], canvas: str, heights: str, widths: str
              ) -> tuple[str, str]:
    """Proposals [B, P, 4] (best first) and their validity bool [B, P].

    features, logits [B, R_l], deltas [B, R_l, 4]: one of each per level; heights, widths:
    float [B, 1], the resized image sizes (the boxes are clipped to them)."""
    top_logits, top_deltas, top_anchors, top_levels = [], [], [], []
    for level, (feature, logits_l, deltas_l) in enumerate(zip(features, logits, deltas)):
        anchors = level_anchors(g, anchor_cfg, level, strides[level], feature, canvas)
        k = g.min(g.dim(logits_l, 1), np.array([cfg.pre_nms_top_n_test], np.int64))
        values, index = g.op("TopK", logits_l, k, axis=1, outputs=2)  # [B, k]
        top_logits.append(values)
        top_deltas.append(gather_rows(g, deltas_l, index))  # [B, k, 4]
        top_anchors.append(g.gather(anchors, index))  # [B, k, 4]
        top_levels.append(g.op("Expand", np.int64(level), k))  # [k]
    scores = g.op("Sigmoid", g.concat(top_logits, axis=1))  # [B, N]
    boxes = decode_boxes(g, g.concat(top_deltas, axis=1), g.concat(top_anchors, axis=1),
                         cfg.box_coder_weights)  # [B, N, 4]
    boxes = clip_boxes(g, boxes, heights, widths)
    valid = g.op("And", not_small(g, boxes, cfg.min_box_size),
                 g.op("GreaterOrEqual", scores, np.float32(cfg.score_thresh)))  # [B, N]

    # scores per (image, level, box): a box takes part only in the NMS of its own level
    levels = g.unsqueeze(g.concat(top_levels, axis=0), [0])  # [1, N]
    level_ids = np.arange(len(features), dtype=np.int64)[:, None]  # [L, 1]
    in_level = g.op("And", g.op("Equal", levels, level_ids), g.unsqueeze(valid, [1]))
    class_scores = g.where(in_level, g.unsqueeze(scores, [1]), np.float32(_INVALID))
    selected = g.op("NonMaxSuppression", boxes, class_scores,
                    np.array([cfg.pre_nms_top_n_test], np.int64),
                    np.array([cfg.nms_thresh], np.float32), np.array([-0.5], np.float32))
    image, box = g.gather(selected, np.int64(0), axis=1), g.gather(selected, np.int64(2), axis=1)
    kept_scores = g.op("GatherND", scores, g.stack_last([image, box]))  # [S]
    (padded_scores, padded_box), _ = pad_groups(
        g, image, g.dim(logits[0], 0), [kept_scores, box], [_INVALID, 0])
    k = g.min(g.dim(padded_scores, 1), np.array([cfg.post_nms_top_n_test], np.int64))
    best_scores, position = g.op("TopK", padded_scores, k, axis=1, outputs=2)  # [B, P]
    best_box = g.op("GatherElements", padded_box, position, axis=1)
    return gather_rows(g, boxes, best_box), g.op("Greater", best_scores, np.float32(-0.5))
