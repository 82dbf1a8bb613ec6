"""detectron2's mask pasting (ops/mask_paste_grid.py) against a float64 per-pixel reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskrcnn.ops import mask_paste_grid
from maskrcnn.ops.mask_paste import paste_masks, paste_masks_thresholded
from maskrcnn.ops.mask_paste_grid import paste_masks_as, paste_masks_grid_sample

M = 28


def reference(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float64, pixel by pixel: the centre (x + 0.5, y + 0.5) mapped into the box, where the
    M x M cells tile the box and cell i's centre is at u = i; the mask sampled bilinearly
    there, zero beyond its edge cells (grid_sample's align_corners=False, zero padding)."""
    height, width = size
    out = torch.zeros((len(masks), height, width), dtype=torch.float64)
    for n, (mask, box) in enumerate(zip(masks.double(), boxes.double().tolist())):
        x0, y0, x1, y1 = box
        if not (x1 > x0 and y1 > y0):
            continue
        padded = F.pad(mask, (1, 1, 1, 1)).tolist()  # cell i at padded index i + 1
        for y in range(height):
            v = (y + 0.5 - y0) / (y1 - y0) * M - 0.5
            if not -1 < v < M:
                continue
            for x in range(width):
                u = (x + 0.5 - x0) / (x1 - x0) * M - 0.5
                if not -1 < u < M:
                    continue
                i, j = math.floor(v), math.floor(u)
                fv, fu = v - i, u - j
                top, bottom = padded[i + 1], padded[i + 2]
                out[n, y, x] = ((1 - fv) * ((1 - fu) * top[j + 1] + fu * top[j + 2])
                                + fv * ((1 - fu) * bottom[j + 1] + fu * bottom[j + 2]))
    return out


def whole_image(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """grid_sample of every image pixel in float32 (detectron2's GPU path samples so)."""
    height, width = size
    x0, y0, x1, y1 = boxes[:, :, None].unbind(1)  # [N, 1] each
    gx = ((torch.arange(width, dtype=torch.float32) + 0.5) - x0) / (x1 - x0) * 2 - 1
    gy = ((torch.arange(height, dtype=torch.float32) + 0.5) - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack((gx[:, None, :].expand(-1, height, -1),
                        gy[:, :, None].expand(-1, -1, width)), dim=3)  # [N, H, W, 2]
    return F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0]


def random_case(gen: torch.Generator, num: int, size: tuple[int, int], max_box: float):
    """Boxes of every size up to max_box, from well outside the image to past its far edges;
    masks in [0, 1] with whole cells at 0 and 1 (saturated probabilities)."""
    height, width = size
    wh = torch.rand(num, 2, generator=gen, dtype=torch.float64) ** 2 * max_box + 1e-3
    xy = torch.rand(num, 2, generator=gen, dtype=torch.float64) * torch.tensor(
        [width * 1.3, height * 1.3], dtype=torch.float64) - wh * 0.6 - 5
    boxes = torch.cat((xy, xy + wh), dim=1).float()
    masks = (torch.rand(num, M, M, generator=gen) * 1.4 - 0.2).clamp(0, 1)
    return masks, boxes


@pytest.mark.parametrize("size", [(40, 56), (33, 70)])
def test_random_masks_match_the_reference(size):
    gen = torch.Generator().manual_seed(0)
    masks, boxes = random_case(gen, 24, size, max_box=80)
    tiny = torch.tensor([[10.2, 12.3, 10.9, 12.5],  # < 1 px
                         [20.0, 5.0, 20.01, 5.02],  # < 1/M px
                         [-30.0, -20.0, 3.4, 2.1],  # mostly outside, top left
                         [size[1] - 2.5, size[0] - 1.2, size[1] + 60.0, size[0] + 9.0]])
    masks = torch.cat((masks, torch.rand(len(tiny), M, M, generator=gen)))
    boxes = torch.cat((boxes, tiny))
    ref = reference(masks, boxes, size)
    ours = paste_masks_grid_sample(masks, boxes, size)
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)
    assert torch.equal(ours, whole_image(masks, boxes, size))  # bit for bit
    binary = paste_masks_grid_sample(masks, boxes, size, threshold=0.5)
    assert binary.dtype == torch.bool and torch.equal(binary, ours >= 0.5)
    assert int((binary != (ref >= 0.5)).sum()) <= 2  # float32 rounding at the threshold

    float64 = paste_masks_grid_sample(masks.double(), boxes.double(), size)
    assert float64.dtype == torch.float64
    torch.testing.assert_close(float64, ref, atol=1e-12, rtol=0)


def test_threshold_keeps_values_equal_to_it():
    """>= as detectron2 thresholds: a constant 0.5 mask on a box of one pixel per cell
    (exact coordinates) keeps its box; torchvision's rule (>) keeps nothing."""
    masks = torch.full((1, 4, 4), 0.5)
    boxes = torch.tensor([[2.0, 3.0, 6.0, 7.0]])
    binary = paste_masks_grid_sample(masks, boxes, (10, 10), threshold=0.5)
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[3:7, 2:6] = True
    assert torch.equal(binary[0], expected)
    assert not paste_masks_thresholded(masks, boxes, (10, 10), 0.5).any()


def test_equals_detectron2s_cpu_window_at_half():
    """detectron2's CPU path samples only floor(x0) - 1 .. ceil(x1) + 1; beyond, values are
    below half the edge cell's, so its masks at >= 0.5 are ours, saturated cells included."""
    gen = torch.Generator().manual_seed(1)
    size = (120, 150)
    masks, boxes = random_case(gen, 40, size, max_box=300)
    masks[:, :, :3] = 1.0  # saturated edges: the fade reaches 0.5 right at the box edge
    full = whole_image(masks, boxes, size)
    window = torch.zeros_like(full, dtype=torch.bool)
    for n, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        window[n, max(math.floor(y0) - 1, 0):math.ceil(y1) + 1,
               max(math.floor(x0) - 1, 0):math.ceil(x1) + 1] = True
    cpu_path = (full >= 0.5) & window
    assert torch.equal(paste_masks_grid_sample(masks, boxes, size, 0.5), cpu_path)


def test_chunks_and_bands_change_nothing(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    size = (90, 130)
    masks, boxes = random_case(gen, 30, size, max_box=200)
    whole = paste_masks_grid_sample(masks, boxes, size)
    monkeypatch.setattr(mask_paste_grid, "_CHUNK_PIXELS", 50)  # bands of rows in one mask
    assert torch.equal(paste_masks_grid_sample(masks, boxes, size), whole)
    assert torch.equal(paste_masks_grid_sample(masks, boxes, size, 0.3), whole >= 0.3)


def test_empty_degenerate_and_outside_boxes_paste_nothing():
    masks = torch.ones(5, M, M)
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0],  # zero width
                          [9.0, 5.0, 4.0, 9.0],  # negative width
                          [float("nan"), 1.0, 8.0, 9.0],
                          [60.0, 2.0, 90.0, 20.0],  # right of the image
                          [-40.0, -40.0, -20.0, -3.0]])  # above left
    for threshold in (None, 0.5):
        assert not paste_masks_grid_sample(masks, boxes, (30, 50), threshold).any()
    out = paste_masks_grid_sample(torch.zeros(0, M, M), torch.zeros(0, 4), (30, 40))
    assert out.shape == (0, 30, 40)
    assert paste_masks_grid_sample(masks, boxes, (0, 40)).shape == (5, 0, 40)


def test_shapes_and_dtypes():
    gen = torch.Generator().manual_seed(3)
    masks, boxes = random_case(gen, 6, (30, 40), max_box=30)
    out = paste_masks_grid_sample(masks, boxes, (30, 40))
    assert torch.equal(paste_masks_grid_sample(masks[:, None], boxes, (30, 40)), out)
    half = paste_masks_grid_sample(masks.bfloat16(), boxes, (30, 40))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), paste_masks_grid_sample(
        masks.bfloat16().float(), boxes, (30, 40)), atol=4e-3, rtol=0)


def test_paste_masks_as_dispatches_and_checks_the_mode():
    gen = torch.Generator().manual_seed(4)
    masks, boxes = random_case(gen, 5, (30, 40), max_box=30)
    assert torch.equal(paste_masks_as("torchvision", masks, boxes, (30, 40)),
                       paste_masks(masks, boxes, (30, 40)))
    assert torch.equal(paste_masks_as("torchvision", masks, boxes, (30, 40), 0.4),
                       paste_masks_thresholded(masks, boxes, (30, 40), 0.4))
    assert torch.equal(paste_masks_as("detectron2", masks, boxes, (30, 40), 0.4),
                       paste_masks_grid_sample(masks, boxes, (30, 40), 0.4))
    with pytest.raises(ValueError, match="roi_heads.mask_paste 'nearest'"):
        paste_masks_as("nearest", masks, boxes, (30, 40))
