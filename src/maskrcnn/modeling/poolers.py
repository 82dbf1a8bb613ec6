"""Multi-level RoIAlign for FPN (Lin et al. 2017, eq. 1; used by Mask R-CNN).

Each RoI is pooled from one pyramid level, k = floor(k0 + log2(sqrt(w*h) / 224)), clamped
to the levels present. All levels are pooled in one sparse product (see
maskrcnn.ops.roi_align.roi_align_levels), so the output is in the order of the boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..ops.roi_align import boxes_to_rois, roi_align_levels

__all__ = ["MultiLevelRoIAlign"]


def _level_exponent(scale: float) -> int:
    """-log2(scale) for a power-of-two scale (1/4 -> 2)."""
    exponent = -math.log2(scale)
    if abs(exponent - round(exponent)) > 1e-6:
        raise ValueError(f"feature scales must be powers of two, got {scale}")
    return int(round(exponent))


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign over FPN levels P_kmin..P_kmax with the FPN level-assignment rule.

    output_size: m (output is m x m). scales: spatial scale of each level, finest first,
    e.g. (1/4, 1/8, 1/16, 1/32) for P2..P5. sampling_ratio, aligned: as in roi_align.
    canonical_box_size, canonical_level: 224 and k0 = 4 in the FPN paper.
    reduction: "avg" (the paper's default) or "max" aggregation of the bin's samples.
    """

    def __init__(
        self,
        output_size: int,
        scales: Sequence[float],
        sampling_ratio: int,
        aligned: bool = False,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
        *,
        reduction: str = "avg",
    ) -> None:
        super().__init__()
        if len(scales) == 0:
            raise ValueError("need at least one feature level")
        self.output_size = output_size
        self.scales = tuple(float(s) for s in scales)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.reduction = reduction
        self.k_min = _level_exponent(self.scales[0])
        self.k_max = _level_exponent(self.scales[-1])
        if self.k_max - self.k_min + 1 != len(self.scales):
            raise ValueError(f"scales must be consecutive powers of 1/2, got {self.scales}")

    def assign_levels(self, boxes: Tensor) -> Tensor:
        """0-based level index of each box. boxes: [K, 4] xyxy -> [K] int64."""
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        # Same arithmetic as torchvision's LevelMapper (eps inside the floor).
        k = torch.floor(
            self.canonical_level
            + torch.log2(torch.sqrt(area) / self.canonical_box_size)
            + torch.tensor(1e-6, dtype=area.dtype)
        )
        k = torch.clamp(k, min=self.k_min, max=self.k_max)
        return k.to(torch.int64) - self.k_min

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """features: one [B, C, H_l, W_l] per level; boxes: one [L_i, 4] per image, in
        input-image pixels. Returns [sum L_i, C, m, m] in the order of the boxes."""
        if len(features) != len(self.scales):
            raise ValueError(f"expected {len(self.scales)} feature levels, got {len(features)}")
        rois = boxes_to_rois(boxes).to(features[0].device)  # [K, 5], in the boxes' dtype
        levels = self.assign_levels(rois[:, 1:])
        return roi_align_levels(
            list(features), rois, levels, self.output_size, list(self.scales),
            self.sampling_ratio, self.aligned, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, scales={self.scales}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
                f"reduction={self.reduction!r}")
