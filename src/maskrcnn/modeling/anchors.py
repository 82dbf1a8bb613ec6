"""Anchors: one set of A boxes (per size, one per aspect ratio) centred on every feature-map
cell."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def cell_anchors(size: float, aspect_ratios: Sequence[float], round_to_int: bool) -> Tensor:
    """Zero-centred anchors of area size**2, one per aspect ratio (height / width).

    Returns [A, 4] float32 xyxy.
    """
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    widths = (1 / h_ratios) * size  # [A]
    heights = h_ratios * size
    anchors = torch.stack([-widths, -heights, widths, heights], dim=1) / 2
    return anchors.round() if round_to_int else anchors


def level_cell_anchors(sizes: float | Sequence[float], aspect_ratios: Sequence[float],
                       round_to_int: bool) -> Tensor:
    """The cell anchors of one level with one or several sizes: [len(sizes) * R, 4], size
    major (for each size, for each ratio), detectron2's DefaultAnchorGenerator order.
    (torchvision's AnchorGenerator is ratio major; with one size per level both agree.)"""
    sizes = [sizes] if isinstance(sizes, (int, float)) else list(sizes)
    return torch.cat([cell_anchors(s, aspect_ratios, round_to_int) for s in sizes])


class AnchorGenerator(nn.Module):
    """Anchors for each level, laid out location-major: index = (y * W + x) * A + a.

    sizes: one entry per level, a size (FPN: one per level) or a sequence of sizes (C4 / C5:
    all sizes on the one level); every level must have the same number A of cell anchors.
    """

    def __init__(
        self,
        sizes: Sequence[float | Sequence[float]],
        aspect_ratios: Sequence[float],
        strides: Sequence[int],
        round_cell_anchors: bool = True,
        strides_from_grid: bool = True,
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"{len(sizes)} anchor sizes for {len(strides)} feature levels")
        self.strides = tuple(strides)
        self.strides_from_grid = strides_from_grid
        counts = set()
        for level, size in enumerate(sizes):
            cells = level_cell_anchors(size, aspect_ratios, round_cell_anchors)  # [A, 4]
            counts.add(cells.shape[0])
            self.register_buffer(f"cell_anchors_{level}", cells, persistent=False)
        if len(counts) != 1:
            raise ValueError(f"every level needs the same number of anchors, got {sizes}")
        self.num_anchors_per_location = counts.pop()

    def level_stride(self, level: int, grid_size: Sequence[int], image_size: Sequence[int]):
        """(stride_y, stride_x) of one level."""
        if self.strides_from_grid:
            return image_size[0] // grid_size[0], image_size[1] // grid_size[1]
        return self.strides[level], self.strides[level]

    def forward(self, features: Sequence[Tensor], padded_image_size: Sequence[int]) -> list[Tensor]:
        """Anchors per level: [H_l * W_l * A, 4] on the features' device, float32 (float64
        for float64 features: box geometry never runs in half precision under autocast)."""
        anchors_per_level = []
        for level, feature in enumerate(features):
            grid_h, grid_w = feature.shape[-2:]
            stride_y, stride_x = self.level_stride(level, (grid_h, grid_w), padded_image_size)
            device = feature.device
            shifts_x = torch.arange(grid_w, dtype=torch.int32, device=device) * stride_x
            shifts_y = torch.arange(grid_h, dtype=torch.int32, device=device) * stride_y
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # [HW, 4]
            dtype = torch.promote_types(feature.dtype, torch.float32)
            cells = getattr(self, f"cell_anchors_{level}").to(dtype)
            # [HW, 1, 4] + [1, A, 4] -> [HW * A, 4]
            anchors_per_level.append((shifts[:, None, :] + cells[None, :, :]).reshape(-1, 4))
        return anchors_per_level
