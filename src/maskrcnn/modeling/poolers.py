"""Multi-level RoI poolers for FPN (Lin et al. 2017, eq. 1; used by Mask R-CNN).

Each RoI is pooled from one pyramid level, k = floor(k0 + log2(sqrt(w*h) / 224)), clamped
to the levels present, with one of the paper's RoI feature extractors (Table 2c/2d), the
`roi_heads.pooler` setting:

- "roi_align" (the paper's, the default) and "roi_align_max": RoIAlign, average or max of a
  bin's bilinear samples; all levels in one sparse product (ops/roi_align.roi_align_levels).
- "roi_warp" and "roi_warp_max": RoIPool's quantised RoI sampled as RoIAlign samples
  (ops/roi_warp.py says exactly how), the same one product on the quantised boxes.
- "roi_pool": RoIPool (quantised RoI, max over each bin's pixels), one roi_pool per level.

The output is in the order of the boxes whatever the levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..ops.roi_align import boxes_to_rois, roi_align_levels
from ..ops.roi_pool import roi_pool_levels
from ..ops.roi_warp import quantized_extent, roi_warp_levels

__all__ = ["POOLERS", "MultiLevelRoIPooler", "MultiLevelRoIAlign"]

# pooler name -> (method, reduction of a bin's values)
_POOLERS = {
    "roi_align": ("roi_align", "avg"),
    "roi_align_max": ("roi_align", "max"),
    "roi_warp": ("roi_warp", "avg"),
    "roi_warp_max": ("roi_warp", "max"),
    "roi_pool": ("roi_pool", "max"),
}
POOLERS = tuple(_POOLERS)


def _level_exponent(scale: float) -> int:
    """-log2(scale) for a power-of-two scale (1/4 -> 2)."""
    exponent = -math.log2(scale)
    if abs(exponent - round(exponent)) > 1e-6:
        raise ValueError(f"feature scales must be powers of two, got {scale}")
    return int(round(exponent))


class MultiLevelRoIPooler(nn.Module):
    """One of POOLERS over FPN levels P_kmin..P_kmax with the FPN level-assignment rule.

    output_size: m (output is m x m). scales: spatial scale of each level, finest first,
    e.g. (1/4, 1/8, 1/16, 1/32) for P2..P5. sampling_ratio: samples per bin and axis of
    RoIAlign and RoIWarp (<= 0: adaptive; RoIPool has none). aligned: RoIAlign's half-pixel
    offset (the quantising poolers refuse it). canonical_box_size, canonical_level: 224 and
    k0 = 4 in the FPN paper. Attributes `method` ("roi_align", "roi_warp", "roi_pool") and
    `reduction` ("avg", "max") say what it computes; `pooler` is its name in POOLERS.
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
        pooler: str = "roi_align",
    ) -> None:
        super().__init__()
        if pooler not in _POOLERS:
            raise ValueError(f"unknown pooler {pooler!r}; choose one of {POOLERS}")
        self.method, self.reduction = _POOLERS[pooler]
        if aligned and self.method != "roi_align":
            raise ValueError(f"aligned=True is RoIAlign's half-pixel offset; the {pooler} "
                             "pooler quantises the RoI: set roi_heads.aligned to false")
        if len(scales) == 0:
            raise ValueError("need at least one feature level")
        self.output_size = output_size
        self.scales = tuple(float(s) for s in scales)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.k_min = _level_exponent(self.scales[0])
        self.k_max = _level_exponent(self.scales[-1])
        if self.k_max - self.k_min + 1 != len(self.scales):
            raise ValueError(f"scales must be consecutive powers of 1/2, got {self.scales}")

    @property
    def pooler(self) -> str:
        """The name in POOLERS of what this pooler computes."""
        if self.method == "roi_pool":
            return "roi_pool"
        return self.method + ("_max" if self.reduction == "max" else "")

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
        features, scales = list(features), list(self.scales)
        if self.method == "roi_pool":
            return roi_pool_levels(features, rois, levels, self.output_size, scales)
        if self.method == "roi_warp":
            return roi_warp_levels(features, rois, levels, self.output_size, scales,
                                   self.sampling_ratio, reduction=self.reduction)
        return roi_align_levels(
            features, rois, levels, self.output_size, scales,
            self.sampling_ratio, self.aligned, reduction=self.reduction,
        )

    def sampled_regions(self, boxes: Sequence[Tensor]) -> list[Tensor]:
        """The input-pixel box each RoI's features are read from, per image ([L_i, 4]): the
        box itself for RoIAlign; for RoIPool and RoIWarp the quantised extent on the RoI's
        level, (x1q, y1q, x1q + w, y1q + h) / scale (ops/roi_warp.quantized_extent)."""
        if self.method == "roi_align":
            return list(boxes)
        regions = []
        for boxes_i in boxes:
            table = torch.tensor(self.scales, dtype=boxes_i.dtype, device=boxes_i.device)
            scale = table[self.assign_levels(boxes_i)]  # [L_i]
            regions.append(quantized_extent(boxes_i, scale) / scale[:, None])
        return regions

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, scales={self.scales}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
                f"pooler={self.pooler!r}")


class MultiLevelRoIAlign(MultiLevelRoIPooler):
    """The RoIAlign pooler under its first name: reduction "avg" (the paper's default,
    pooler "roi_align") or "max" ("roi_align_max")."""

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
        if reduction not in ("avg", "max"):
            raise ValueError(f"reduction must be 'avg' or 'max', got {reduction!r}")
        super().__init__(output_size, scales, sampling_ratio, aligned, canonical_box_size,
                         canonical_level, pooler="roi_align" if reduction == "avg"
                         else "roi_align_max")
