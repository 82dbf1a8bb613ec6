"""RoIPool against torchvision.ops.roi_pool, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.testing import assert_close

from maskrcnn.ops.roi_pool import roi_pool


def random_rois(gen: torch.Generator, counts: list[int], height: float, width: float):
    """Per-image [L_i, 4] boxes (sizes 0.1x..1.5x the image, some outside) and [K, 5] rois."""
    per_image = []
    for k in counts:
        size = torch.rand(k, 2, generator=gen) * 1.4 + 0.1
        size = size * torch.tensor([width, height])
        centre = (torch.rand(k, 2, generator=gen) * 1.4 - 0.2) * torch.tensor([width, height])
        per_image.append(torch.cat([centre - size / 2, centre + size / 2], dim=1))
    batch = torch.cat([torch.full((k, 1), float(i)) for i, k in enumerate(counts)])
    return per_image, torch.cat([batch, torch.cat(per_image)], dim=1)


def grads(out, inp, grad_out):
    return torch.autograd.grad(out, inp, grad_out)[0]


@pytest.mark.parametrize("output_size", [7, (3, 5), 1])
@pytest.mark.parametrize("scale", [1.0, 0.25, 0.5])
@pytest.mark.parametrize("as_list", [False, True])
def test_matches_torchvision(output_size, scale, as_list):
    gen = torch.Generator().manual_seed(int(scale * 8) + int(as_list))
    inp = torch.randn(3, 4, 17, 21, generator=gen, requires_grad=True)
    per_image, rois = random_rois(gen, [13, 0, 21], 17 / scale, 21 / scale)
    rois[0, 1:] = torch.tensor([3.0, 3.0, 3.0, 3.0]) / scale  # a single pixel
    rois[1, 1:] = torch.tensor([-40.0, -40.0, -30.0, -30.0]) / scale  # outside: empty bins
    rois[2, 1:] = torch.tensor([2.5, 1.5, 9.5, -0.5]) / scale  # halves; y2 < y1
    per_image[0][:3] = rois[:3, 1:]
    ours = roi_pool(inp, per_image if as_list else rois, output_size, scale)
    ref = torchvision.ops.roi_pool(inp, rois, output_size, scale)
    assert_close(ours, ref, rtol=0, atol=0)
    grad_out = torch.randn(ours.shape, generator=gen)
    assert_close(grads(ours, inp, grad_out), grads(ref, inp, grad_out))


def test_ties_take_the_first_maximum():
    """Few distinct values: many ties, the gradient must go where torchvision sends it."""
    gen = torch.Generator().manual_seed(1)
    inp = torch.randint(0, 3, (2, 3, 12, 14), generator=gen).double().requires_grad_()
    rois = random_rois(gen, [11, 9], 12, 14)[1].double()
    ours = roi_pool(inp, rois, (4, 3), 1.0)
    ref = torchvision.ops.roi_pool(inp, rois, (4, 3), 1.0)
    assert_close(ours, ref, rtol=0, atol=0)
    grad_out = torch.rand(ours.shape, generator=gen, dtype=torch.float64) + 1
    assert_close(grads(ours, inp, grad_out), grads(ref, inp, grad_out), rtol=0, atol=0)


def test_mixed_sizes_model_shape():
    """Proposal-like boxes of 16..400 px on a stride-16 map (the C4 setting), 7x7 bins."""
    gen = torch.Generator().manual_seed(2)
    inp = torch.randn(1, 8, 50, 76, generator=gen, requires_grad=True)
    size = torch.empty(150, 2).uniform_(16, 400, generator=gen)
    centre = torch.rand(150, 2, generator=gen) * torch.tensor([1216.0, 800.0])
    boxes = [torch.cat([centre - size / 2, centre + size / 2], 1)]
    ours = roi_pool(inp, boxes, 7, 1 / 16)
    ref = torchvision.ops.roi_pool(inp, boxes, 7, 1 / 16)
    assert_close(ours, ref, rtol=0, atol=0)
    grad_out = torch.randn(ours.shape, generator=gen)
    assert_close(grads(ours, inp, grad_out), grads(ref, inp, grad_out))


def test_empty_boxes():
    inp = torch.randn(2, 3, 6, 7, requires_grad=True)
    for boxes in ([torch.zeros(0, 4), torch.zeros(0, 4)], torch.zeros(0, 5)):
        out = roi_pool(inp, boxes, 2, 0.5)
        assert out.shape == (0, 3, 2, 2)
        (grad,) = torch.autograd.grad(out.sum(), inp)
        assert_close(grad, torch.zeros_like(inp))
