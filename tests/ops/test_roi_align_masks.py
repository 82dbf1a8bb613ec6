"""roi_align_masks (separable RoIAlign of one-channel masks) against torchvision's roi_align."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.testing import assert_close

from maskrcnn.ops.roi_align_masks import roi_align_masks

from .test_roi_align import random_boxes


def blob_masks(gen: torch.Generator, g: int, height: int, width: int) -> torch.Tensor:
    """[g, H, W] uint8 masks of random ellipses."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centre = torch.rand(g, 2, generator=gen) * torch.tensor([height, width])
    radius = 2 + torch.rand(g, 2, generator=gen) * torch.tensor([height, width]) / 3
    dist = ((yy - centre[:, 0, None, None]) / radius[:, 0, None, None]) ** 2 + (
        (xx - centre[:, 1, None, None]) / radius[:, 1, None, None]
    ) ** 2
    return (dist <= 1).to(torch.uint8)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("size", [(28, 28), (14, 9)])
def test_matches_torchvision(aligned, sampling_ratio, size):
    gen = torch.Generator().manual_seed(7)
    masks = blob_masks(gen, 5, 61, 83)
    boxes = random_boxes(gen, 40, 61, 83, flipped=not aligned)
    index = torch.randint(0, 5, (40, 1), generator=gen).float()
    rois = torch.cat([index, boxes], 1)
    expected = torchvision.ops.roi_align(masks[:, None].float(), rois, size, 1.0,
                                         sampling_ratio, aligned)[:, 0]
    got = roi_align_masks(masks, rois, size, sampling_ratio, aligned)
    assert got.shape == (40,) + size and got.dtype == torch.float32
    assert_close(got, expected, atol=1e-6, rtol=0)


def test_bool_masks_and_float64_rois():
    gen = torch.Generator().manual_seed(1)
    masks = blob_masks(gen, 3, 50, 40)
    rois = torch.cat([torch.randint(0, 3, (30, 1), generator=gen).double(),
                      random_boxes(gen, 30, 50, 40).double()], 1)
    got = roi_align_masks(masks.bool(), rois, 7)
    assert got.dtype == torch.float64
    expected = torchvision.ops.roi_align(masks[:, None].double(), rois, 7, 1.0, 0)[:, 0]
    assert_close(got, expected, atol=1e-12, rtol=0)


def test_full_precision_under_autocast():
    gen = torch.Generator().manual_seed(2)
    masks = blob_masks(gen, 2, 30, 30)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0]]),
                      random_boxes(gen, 5, 30, 30)], 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = roi_align_masks(masks, rois, 14)
    assert got.dtype == torch.float32
    assert_close(got, roi_align_masks(masks, rois, 14), atol=0, rtol=0)


def test_empty_inputs():
    masks = torch.ones(2, 10, 10)
    assert roi_align_masks(masks, torch.zeros(0, 5), 28).shape == (0, 28, 28)
    rois = torch.tensor([[0.0, 20, 20, 30, 30]])  # entirely outside: zeros
    assert roi_align_masks(masks, rois, 4).abs().sum() == 0
    with pytest.raises(ValueError, match=r"masks \[G, H, W\]"):
        roi_align_masks(masks[0], rois, 4)
