"""Box regression targets: (dx, dy, dw, dh) of a box relative to a reference box.

The arithmetic (operation order included) follows torchvision's BoxCoder so that decoded
boxes agree to the last bit: widths x2 - x1, centres x1 + 0.5 w, no "+1".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class BoxCoder:
    """Encode boxes as deltas against reference boxes, and decode deltas back.

    weights: (wx, wy, ww, wh) scale the deltas (Faster R-CNN heads use (10, 10, 5, 5)).
    bbox_xform_clip: upper bound of dw, dh before exp() when decoding.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float],
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, gt_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Deltas [N, 4] (dx, dy, dw, dh) that take proposals [N, 4] to gt_boxes [N, 4],
        in float32 or float64 (see _geometry_dtype)."""
        dtype = _geometry_dtype(gt_boxes, proposals)
        gt_boxes, proposals = gt_boxes.to(dtype), proposals.to(dtype)
        wx, wy, ww, wh = self.weights
        prop_w = proposals[:, 2] - proposals[:, 0]
        prop_h = proposals[:, 3] - proposals[:, 1]
        prop_cx = proposals[:, 0] + 0.5 * prop_w
        prop_cy = proposals[:, 1] + 0.5 * prop_h

        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0]
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1]
        gt_cx = gt_boxes[:, 0] + 0.5 * gt_w
        gt_cy = gt_boxes[:, 1] + 0.5 * gt_h

        dx = wx * (gt_cx - prop_cx) / prop_w
        dy = wy * (gt_cy - prop_cy) / prop_h
        dw = ww * torch.log(gt_w / prop_w)
        dh = wh * torch.log(gt_h / prop_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Apply deltas [N, K*4] to reference boxes [N, 4] -> boxes [N, K, 4], in float32 or
        float64 (see _geometry_dtype)."""
        dtype = _geometry_dtype(deltas, boxes)
        deltas, boxes = deltas.to(dtype), boxes.to(dtype)
        num_boxes = boxes.shape[0]
        deltas = deltas.reshape(num_boxes, deltas.shape[-1] // 4, 4)  # [N, K*4] -> [N, K, 4]
        widths = (boxes[:, 2] - boxes[:, 0])[:, None]  # [N, 1]
        heights = (boxes[:, 3] - boxes[:, 1])[:, None]
        ctr_x = boxes[:, 0, None] + 0.5 * widths
        ctr_y = boxes[:, 1, None] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[..., 0] / wx  # [N, K]
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.bbox_xform_clip)  # keep exp() finite
        dh = (deltas[..., 3] / wh).clamp(max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        return torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h),
            dim=2,
        )  # [N, K, 4]


def _geometry_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    """The promoted dtype of a and b, at least float32: under bfloat16 autocast the heads
    give bfloat16 deltas, and box coordinates of a few hundred pixels would be rounded to
    2-4 px (8 bits of mantissa) and collapse small boxes."""
    return torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
