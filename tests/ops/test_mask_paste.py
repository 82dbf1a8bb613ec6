import pytest
import torch
from torchvision.models.detection.roi_heads import expand_boxes, paste_masks_in_image

from maskrcnn.ops import mask_paste
from maskrcnn.ops.mask_paste import paste_masks, paste_masks_thresholded

M = 28


def reference(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's paste, mask by mask. torchvision raises for some boxes whose expanded
    integer box misses the image (negative slice ends); the right answer there is zeros."""
    height, width = size
    int_boxes = expand_boxes(boxes, (M + 2) / M).to(torch.int64)
    out = torch.zeros((len(masks), height, width), dtype=masks.dtype)
    for i, (x1, y1, x2, y2) in enumerate(int_boxes.tolist()):
        if min(x2 + 1, width) > max(x1, 0) and min(y2 + 1, height) > max(y1, 0):
            out[i] = paste_masks_in_image(masks[i, None, None], boxes[i, None], size)[0, 0]
    return out


def random_case(gen: torch.Generator, num: int, size: tuple[int, int], max_box: float,
                dtype=torch.float32):
    height, width = size
    wh = torch.rand(num, 2, generator=gen, dtype=torch.float64) * max_box
    # top-left anywhere from well outside the image to past its far edges
    xy = torch.rand(num, 2, generator=gen, dtype=torch.float64) * torch.tensor(
        [width * 1.3, height * 1.3], dtype=torch.float64) - wh * 0.6 - 5
    boxes = torch.cat((xy, xy + wh), dim=1).float()
    masks = torch.rand(num, M, M, generator=gen, dtype=dtype)
    return masks, boxes


def emulation_is_exact() -> bool:
    """Our float32 rounding was identified as torch's own on this machine (see mask_paste)."""
    return mask_paste._calibrate("cpu")[1]


def assert_paste_matches(masks, boxes, size, atol=1e-5, exact=True):
    ours = paste_masks(masks, boxes, size)
    ref = reference(masks, boxes, size)
    assert ours.shape == ref.shape and ours.dtype == masks.dtype
    torch.testing.assert_close(ours, ref, atol=atol, rtol=0)
    if exact and masks.dtype == torch.float32 and emulation_is_exact():
        assert torch.equal(ours, ref)
    thresholded = paste_masks_thresholded(masks, boxes, size, 0.5)
    assert thresholded.dtype == torch.bool
    assert torch.equal(thresholded, ours > 0.5)
    flips = int((thresholded != (ref > 0.5)).sum())
    union = int(((ref > 0.5) | thresholded).sum())
    assert flips <= 1e-3 * max(union, 1)  # IoU of the thresholded masks > 0.999
    return ours, ref


def test_random_masks_and_boxes_match_torchvision():
    gen = torch.Generator().manual_seed(0)
    for size in [(64, 96), (150, 110), (37, 200)]:
        masks, boxes = random_case(gen, 40, size, max_box=160)
        assert_paste_matches(masks, boxes, size)


def test_bit_exact_where_the_resize_rounding_was_identified():
    if not emulation_is_exact():
        pytest.skip("this torch build rounds its bilinear resize in a way we do not emulate")
    gen = torch.Generator().manual_seed(1)
    masks, boxes = random_case(gen, 60, (120, 160), max_box=140)
    ours, ref = assert_paste_matches(masks, boxes, (120, 160))
    assert torch.equal(ours, ref)
    assert torch.equal(paste_masks_thresholded(masks, boxes, (120, 160)), ref > 0.5)


def test_unfused_rounding_is_close(monkeypatch):
    monkeypatch.setattr(mask_paste, "_torch_fuses_multiply_add", lambda device_type: False)
    gen = torch.Generator().manual_seed(2)
    masks, boxes = random_case(gen, 30, (90, 120), max_box=150)
    assert_paste_matches(masks, boxes, (90, 120), atol=1e-5, exact=False)


def test_border_tiny_and_special_boxes():
    size = (50, 70)
    boxes = torch.tensor([
        [-20.0, -15.0, 30.0, 25.0],  # over the top-left corner
        [40.0, 30.0, 95.0, 80.0],  # over the bottom-right corner
        [-100.0, 10.0, 200.0, 20.0],  # wider than the image
        [10.0, 10.0, 10.5, 10.2],  # tiny: one pixel
        [5.0, 5.0, 5.0, 5.0],  # zero size
        [20.0, 20.0, 10.0, 10.0],  # inverted
        [0.0, 0.0, 27.0, 27.0],  # resized size 30 = padded size: a plain copy
        [3.0, 4.0, 3.0 + 54.9, 4.0 + 71.9],  # out_w + out_h around torch's 128 kernel switch
        [3.0, 4.0, 3.0 + 56.9, 4.0 + 71.9],
        [3.0, 4.0, 3.0 + 55.9, 4.0 + 71.9],
        [0.0, 0.0, 69.0, 49.0],  # the whole image
        [-3.0, -2.0, -0.5, 30.0],  # expanded box just reaches column 0
        [68.0, 48.0, 75.0, 60.0],  # starts at the last pixel
    ])
    masks = torch.rand(len(boxes), M, M, generator=torch.Generator().manual_seed(3))
    ours, _ = assert_paste_matches(masks, boxes, size)
    assert ours[4].count_nonzero() <= 1 and ours[5].count_nonzero() <= 1


def test_boxes_missing_the_image_give_zeros():
    size = (40, 60)
    boxes = torch.tensor([
        [-50.0, 5.0, -10.0, 20.0], [70.0, 5.0, 90.0, 20.0],
        [5.0, -60.0, 20.0, -20.0], [5.0, 45.0, 20.0, 80.0],
    ])
    masks = torch.ones(len(boxes), M, M)
    assert not paste_masks(masks, boxes, size).any()
    assert not paste_masks_thresholded(masks, boxes, size, 0.5).any()


def test_no_masks_and_shapes():
    out = paste_masks(torch.zeros(0, M, M), torch.zeros(0, 4), (30, 40))
    assert out.shape == (0, 30, 40) and out.dtype == torch.float32
    assert paste_masks_thresholded(torch.zeros(0, M, M), torch.zeros(0, 4), (30, 40), 0.5
                                   ).shape == (0, 30, 40)
    masks = torch.rand(3, M, M)
    boxes = torch.tensor([[1.0, 2.0, 20.0, 25.0]]).repeat(3, 1)
    assert torch.equal(paste_masks(masks[:, None], boxes, (30, 40)),
                       paste_masks(masks, boxes, (30, 40)))  # [N, 1, M, M] accepted too


def test_float64_and_other_mask_sizes():
    gen = torch.Generator().manual_seed(4)
    masks, boxes = random_case(gen, 25, (80, 100), max_box=120, dtype=torch.float64)
    ours = paste_masks(masks, boxes, (80, 100))
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, reference(masks, boxes, (80, 100)), atol=1e-12, rtol=0)
    small = torch.rand(6, 14, 14, generator=gen)  # a 14 x 14 mask head
    small_boxes = torch.tensor([[5.0, 5.0, 60.0, 40.0]]).repeat(6, 1) + torch.arange(6.0)[:, None]
    ref = paste_masks_in_image(small[:, None], small_boxes, (80, 100))[:, 0]
    torch.testing.assert_close(paste_masks(small, small_boxes, (80, 100)), ref, atol=1e-5, rtol=0)


def test_chunking_does_not_change_the_result(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    masks, boxes = random_case(gen, 20, (100, 120), max_box=130)
    whole = paste_masks(masks, boxes, (100, 120))
    monkeypatch.setattr(mask_paste, "_CHUNK_ELEMENTS", 300)  # a few rows at a time
    assert torch.equal(paste_masks(masks, boxes, (100, 120)), whole)
