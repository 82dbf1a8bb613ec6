"""RoIWarp (avg and max) against a float64 loop reference, its quantisation against RoIPool's,
and gradients; RoIPool against its own loop reference (the torchvision tests are in
test_roi_pool.py)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from maskrcnn.ops import roi_align, roi_pool, roi_warp
from maskrcnn.ops.roi_warp import quantized_extent

from .loop_poolers import roi_pool_one, roi_warp_one

# float64 ops against the float64 loop: only summation order differs
TOL = dict(rtol=0.0, atol=1e-12)


def random_rois(gen: torch.Generator, counts: list[int], height: float, width: float):
    """[K, 5] float64 rois: sizes 0.05x..1.5x the image, some partly or wholly outside, a
    zero-size and a flipped box, corners on exact halves of the scaled grid."""
    size = torch.rand(sum(counts), 2, generator=gen, dtype=torch.float64) * 1.45 + 0.05
    size = size * torch.tensor([width, height], dtype=torch.float64)
    centre = (torch.rand(sum(counts), 2, generator=gen, dtype=torch.float64) * 1.4 - 0.2)
    centre = centre * torch.tensor([width, height], dtype=torch.float64)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    boxes[0, 2:] = boxes[0, :2]  # zero size
    boxes[1, [0, 2]] = boxes[1, [2, 0]]  # flipped: x2 < x1
    batch = torch.cat([torch.full((k, 1), float(i), dtype=torch.float64)
                       for i, k in enumerate(counts)])
    return torch.cat([batch, boxes], dim=1)


def loop(fn, inp, rois, *args):
    return torch.stack([fn(inp[int(r[0])], r[1:], *args) for r in rois.tolist()])


@pytest.mark.parametrize("reduction", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [2, 1, 0])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_warp_matches_loop_reference(reduction, sampling_ratio, scale):
    gen = torch.Generator().manual_seed(int(scale * 8) + sampling_ratio)
    inp = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, [7, 6], 9 / scale, 11 / scale)
    rois[2, 1:] = torch.tensor([2.5, 1.5, 6.5, -0.5]) / scale  # halves round away from zero
    ours = roi_warp(inp, rois, (3, 2), scale, sampling_ratio, reduction=reduction)
    ref = loop(roi_warp_one, inp, rois, (3, 2), scale, sampling_ratio, reduction)
    assert_close(ours, ref, **TOL)
    grad_out = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, inp, grad_out)
    (g_ref,) = torch.autograd.grad(ref, inp, grad_out)
    assert_close(g_ours, g_ref, **TOL)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_pool_matches_loop_reference(scale):
    gen = torch.Generator().manual_seed(11 + int(scale * 4))
    inp = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, [8, 5], 9 / scale, 11 / scale)
    ours = roi_pool(inp, rois, (3, 2), scale)
    ref = loop(roi_pool_one, inp, rois, (3, 2), scale)
    assert_close(ours, ref, rtol=0, atol=0)
    grad_out = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, inp, grad_out)
    (g_ref,) = torch.autograd.grad(ref, inp, grad_out)
    assert_close(g_ours, g_ref, **TOL)  # gradients summed in another order


@pytest.mark.parametrize("scale", [1.0, 0.25, 1 / 3, 1 / 16])
def test_quantisation_is_roi_pools(scale):
    """The warped extent is exactly RoIPool's RoI: on a map whose value is its raster index,
    a 1x1 RoIPool gives the RoI's last pixel (max) and first pixel (max of the negation)."""
    height, width = 40, 50
    raster = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    gen = torch.Generator().manual_seed(3)
    x1y1 = torch.rand(60, 2, generator=gen) * torch.tensor([width - 12.0, height - 12.0])
    boxes = torch.cat([x1y1, x1y1 + torch.rand(60, 2, generator=gen) * 10], 1) / scale
    boxes[:6] = torch.tensor([[2.5, 3.5, 7.5, 8.5], [0.5, 1.49, 4.51, 1.5],
                              [3.0, 3.0, 3.0, 3.0], [6.0, 5.0, 4.0, 9.0],
                              [1.5, 0.5, 1.5, 0.5], [9.4999, 2.5001, 20.5, 11.4999]]) / scale
    extent = quantized_extent(boxes, scale).to(torch.int64)  # [K, 4]
    last = roi_pool(raster, [boxes], 1, scale).flatten()
    first = -roi_pool(-raster, [boxes], 1, scale).flatten()
    assert torch.equal(last.to(torch.int64), (extent[:, 3] - 1) * width + extent[:, 2] - 1)
    assert torch.equal(first.to(torch.int64), extent[:, 1] * width + extent[:, 0])
    # a scale per box (what roi_warp_levels passes) rounds exactly as the one float
    assert torch.equal(quantized_extent(boxes, torch.full((60,), scale)).to(torch.int64), extent)


def test_roi_warp_quantises_where_roi_align_does_not():
    """A box off the feature grid: RoIWarp pools the quantised box, which RoIAlign pools
    only when handed that box (with RoIPool's +1 pixel), never the original one."""
    gen = torch.Generator().manual_seed(5)
    inp = torch.randn(1, 2, 12, 12, generator=gen, dtype=torch.float64)
    box = torch.tensor([[0.0, 5.3, 6.6, 29.0, 37.4]], dtype=torch.float64)  # scale 1/4
    warped = roi_warp(inp, box, 3, 0.25, 2)
    quantised = torch.tensor([[0.0, 1.0, 2.0, 8.0, 10.0]], dtype=torch.float64)  # x2q + 1
    assert_close(warped, roi_align(inp, quantised, 3, 1.0, 2), rtol=0, atol=0)
    assert not torch.allclose(warped, roi_align(inp, box, 3, 0.25, 2))
    without_plus_one = torch.tensor([[0.0, 1.0, 2.0, 7.0, 9.0]], dtype=torch.float64)
    assert not torch.allclose(warped, roi_align(inp, without_plus_one, 3, 1.0, 2))


@pytest.mark.parametrize("pooler", ["roi_warp", "roi_warp_max", "roi_pool"])
def test_gradcheck(pooler):
    gen = torch.Generator().manual_seed(2)
    inp = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 0.6, 1.2, 4.4, 3.9], [0.0, 2.0, -1.0, 9.0, 2.6],
                         [0.0, 3.0, 3.0, 3.2, 3.1]], dtype=torch.float64)
    if pooler == "roi_pool":
        fn = lambda x: roi_pool(x, rois, 2, 1.0)  # noqa: E731
    else:
        reduction = "max" if pooler == "roi_warp_max" else "avg"
        fn = lambda x: roi_warp(x, rois, 2, 1.0, 2, reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (inp,), fast_mode=True)


def test_empty_and_low_precision():
    inp = torch.randn(2, 3, 6, 7, requires_grad=True)
    out = roi_warp(inp, [torch.zeros(0, 4), torch.zeros(0, 4)], 2, 0.5)
    assert out.shape == (0, 3, 2, 2)
    (grad,) = torch.autograd.grad(out.sum(), inp)
    assert not grad.any()
    boxes = [torch.tensor([[1.0, 2.0, 9.0, 11.0]]), torch.zeros(0, 4)]
    half = roi_warp(inp.detach().bfloat16(), boxes, 2, 0.5)
    assert half.dtype == torch.bfloat16
    assert_close(half.float(), roi_warp(inp.detach().bfloat16().float(), boxes, 2, 0.5),
                 rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError):
        roi_warp(inp, boxes, 2, 0.5, reduction="sum")
