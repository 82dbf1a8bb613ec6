"""RoIAlign against torchvision.ops.roi_align, a float64 loop reference and gradcheck."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torchvision
from torch.testing import assert_close

from maskrcnn.ops import roi_weights
from maskrcnn.ops.roi_align import roi_align

roi_align_module = importlib.import_module("maskrcnn.ops.roi_align")  # the module


def random_boxes(
    gen: torch.Generator, k: int, height: float, width: float, flipped: bool = True
) -> torch.Tensor:
    """[k, 4] xyxy boxes: log-uniform sizes from 0.2 px to 1.5x the image, centres a bit
    outside the image too, two zero-size boxes and one flipped box (x2 < x1).

    torchvision cannot take flipped boxes with aligned=True and adaptive sampling (it
    computes a negative sample count); pass flipped=False there."""
    size = torch.exp(torch.empty(k, 2).uniform_(math.log(0.2), math.log(1.5), generator=gen))
    size = size * torch.tensor([width, height])
    centre = torch.rand(k, 2, generator=gen) * torch.tensor([width, height]) * 1.3 - 0.15 * (
        torch.tensor([width, height])
    )
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    boxes[:2, 2:] = boxes[:2, :2]  # zero size
    if flipped:
        boxes[2, [0, 2]] = boxes[2, [2, 0]]
    return boxes


def random_rois(
    gen: torch.Generator, counts: list[int], height: float, width: float, flipped: bool = True
):
    """List of per-image boxes and the equivalent [K, 5] tensor."""
    per_image = [
        random_boxes(gen, k, height, width, flipped) if k else torch.zeros(0, 4) for k in counts
    ]
    batch = torch.cat([torch.full((k, 1), float(i)) for i, k in enumerate(counts)])
    return per_image, torch.cat([batch, torch.cat(per_image)], dim=1)


def bilinear_ref(plane: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """The reference kernels' bilinear read of [C, H, W] at (y, x), written out by hand."""
    _, height, width = plane.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return plane.new_zeros(plane.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * plane[:, y0, x0] + hy * lx * plane[:, y0, x1]
            + ly * hx * plane[:, y1, x0] + ly * lx * plane[:, y1, x1])


def roi_align_ref(inp, rois, out_hw, scale, sampling_ratio, aligned, reduction="avg"):
    """Loop reference (float64, tiny inputs), differentiable through autograd."""
    offset = 0.5 if aligned else 0.0
    out = []
    for roi in rois.tolist():
        plane = inp[int(roi[0])]
        x1, y1 = roi[1] * scale - offset, roi[2] * scale - offset
        roi_w, roi_h = roi[3] * scale - offset - x1, roi[4] * scale - offset - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_hw[0], roi_w / out_hw[1]
        gh = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_h), 0)
        gw = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_w), 0)
        bins = []
        for py in range(out_hw[0]):
            for px in range(out_hw[1]):
                samples = [
                    bilinear_ref(plane, y1 + py * bin_h + (iy + 0.5) * bin_h / gh,
                                 x1 + px * bin_w + (ix + 0.5) * bin_w / gw)
                    for iy in range(gh) for ix in range(gw)
                ]
                if not samples:
                    bins.append(plane.new_zeros(plane.shape[0]))
                elif reduction == "avg":
                    bins.append(torch.stack(samples).sum(0) / max(gh * gw, 1))
                else:
                    bins.append(torch.stack(samples).max(0).values)
        out.append(torch.stack(bins, 1).view(-1, *out_hw))  # [C, oh, ow]
    return torch.stack(out) if out else inp.new_zeros((0, inp.shape[1], *out_hw))


def grads(out: torch.Tensor, inp: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(out, inp, grad_out)[0]


@pytest.fixture(params=["transpose+blas", "gather+blas", "gather+indexing"])
def paths(request, monkeypatch):
    """Run a test with each implementation path: feature rows transposed whole or gathered
    pixel by pixel; products in the sparse BLAS or with indexing ops."""
    rows, product = request.param.split("+")
    monkeypatch.setattr(roi_align_module, "_GATHER_BELOW", 0.0 if rows == "transpose" else 1.01)
    monkeypatch.setattr(roi_align_module, "_SMALL_PRODUCT", 0 if product == "blas" else 1 << 62)
    return request.param


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0, -1, 3])
@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_matches_torchvision(aligned, sampling_ratio, as_list, scale, paths):
    gen = torch.Generator().manual_seed(sampling_ratio * 7 + int(aligned) + int(as_list) * 3)
    inp = torch.randn(3, 5, 19, 23, generator=gen, requires_grad=True)
    flipped = not (aligned and sampling_ratio <= 0)
    per_image, rois = random_rois(gen, [17, 0, 23], 19 / scale, 23 / scale, flipped)
    boxes = per_image if as_list else rois
    ours = roi_align(inp, boxes, (5, 4), scale, sampling_ratio, aligned)
    ref = torchvision.ops.roi_align(inp, rois, (5, 4), scale, sampling_ratio, aligned)
    assert ours.shape == (40, 5, 5, 4)
    assert_close(ours, ref)
    grad_out = torch.randn(ours.shape, generator=gen)
    assert_close(grads(ours, inp, grad_out), grads(ref, inp, grad_out))


@pytest.mark.parametrize("aligned", [False, True])
def test_model_shapes_match_torchvision(aligned):
    """Realistic proposals on a feature map, 7x7 and 14x14 outputs, sampling 2."""
    gen = torch.Generator().manual_seed(1)
    inp = torch.randn(1, 16, 50, 76, generator=gen, requires_grad=True)
    size = torch.empty(200, 2).uniform_(16, 400, generator=gen)
    centre = torch.rand(200, 2, generator=gen) * torch.tensor([304.0, 200.0])
    boxes = [torch.cat([centre - size / 2, centre + size / 2], 1).clamp(min=0)]
    for out in (7, 14):
        ours = roi_align(inp, boxes, out, 0.25, 2, aligned)
        ref = torchvision.ops.roi_align(inp, boxes, out, 0.25, 2, aligned)
        assert_close(ours, ref)
        grad_out = torch.randn(ours.shape, generator=gen)
        assert_close(grads(ours, inp, grad_out), grads(ref, inp, grad_out))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_matches_loop_reference_float64(aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(2)
    inp = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, [5, 4], 14, 18)[1].double()
    ours = roi_align(inp, rois, (3, 2), 0.5, sampling_ratio, aligned)
    ref = roi_align_ref(inp, rois, (3, 2), 0.5, sampling_ratio, aligned)
    assert_close(ours, ref)
    grad_out = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    assert_close(grads(ours, inp, grad_out), grads(ref, inp, grad_out))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_max_reduction_matches_loop_reference(aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(3)
    inp = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, [6, 5], 14, 18)[1].double()
    ours = roi_align(inp, rois, (3, 2), 0.5, sampling_ratio, aligned, reduction="max")
    ref = roi_align_ref(inp, rois, (3, 2), 0.5, sampling_ratio, aligned, reduction="max")
    assert_close(ours, ref)
    avg = roi_align(inp, rois, (3, 2), 0.5, sampling_ratio, aligned)
    assert not torch.allclose(ours, avg)  # max is not the mean
    grad_out = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    assert_close(grads(ours, inp, grad_out), grads(ref, inp, grad_out))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("reduction", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_gradcheck(aligned, reduction, sampling_ratio):
    """Full Jacobian check for one setting, fast mode (random projections) for the others
    (the full one costs ~160 calls, slow when the machine is shared)."""
    gen = torch.Generator().manual_seed(4)
    inp = torch.randn(2, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 1.1, 4.2, 3.7], [1, -1.5, 2.2, 3.1, 5.4],
                         [0, 2.6, 0.4, 6.9, 2.9]], dtype=torch.float64)

    def fn(x):
        return roi_align(x, rois, 2, 1.0, sampling_ratio, aligned, reduction=reduction)

    full = reduction == "avg" and sampling_ratio == 2 and not aligned
    assert torch.autograd.gradcheck(fn, (inp,), fast_mode=not full)


@pytest.mark.parametrize("reduction", ["avg", "max"])
def test_empty_boxes(reduction, paths):
    inp = torch.randn(2, 4, 6, 7, requires_grad=True)
    for boxes in ([torch.zeros(0, 4), torch.zeros(0, 4)], torch.zeros(0, 5)):
        out = roi_align(inp, boxes, (3, 2), 0.5, 2, reduction=reduction)
        assert out.shape == (0, 4, 3, 2)
        (grad,) = torch.autograd.grad(out.sum(), inp)
        assert_close(grad, torch.zeros_like(inp))


def test_channels_last_input_and_output(paths):
    gen = torch.Generator().manual_seed(5)
    inp = torch.randn(2, 8, 11, 13, generator=gen)
    rois = random_rois(gen, [9, 7], 22, 26, flipped=False)[1]
    inp_cl = inp.contiguous(memory_format=torch.channels_last).requires_grad_()
    inp.requires_grad_()
    ours = roi_align(inp_cl, rois, 4, 0.5, 0, True)
    ref = torchvision.ops.roi_align(inp, rois, 4, 0.5, 0, True)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert roi_align(inp, rois, 4, 0.5, 0, True).is_contiguous()
    assert_close(ours, ref)
    grad_out = torch.randn(ours.shape, generator=gen)
    assert_close(grads(ours, inp_cl, grad_out), grads(ref, inp, grad_out))


def test_split_into_blocks_matches(monkeypatch):
    """Many non-zeros are pooled in several sparse blocks: same result as one block."""
    gen = torch.Generator().manual_seed(6)
    inp = torch.randn(2, 3, 30, 40, generator=gen, requires_grad=True)
    rois = random_rois(gen, [10, 12], 30, 40)[1]
    monkeypatch.setattr(roi_align_module, "_MAX_NNZ_PER_BLOCK", 500)
    built, outer_rows = [], roi_align_module.outer_rows

    def spy(*args):
        built.append(args)
        return outer_rows(*args)

    monkeypatch.setattr(roi_align_module, "outer_rows", spy)
    ours = roi_align(inp, rois, 6, 1.0, 0, False)
    assert len(built) > 3
    ref = torchvision.ops.roi_align(inp, rois, 6, 1.0, 0, False)
    assert_close(ours, ref)
    grad_out = torch.randn(ours.shape, generator=gen)
    assert_close(grads(ours, inp, grad_out), grads(ref, inp, grad_out))
    nnz = torch.randint(1, 400, (50,), generator=gen)
    blocks = roi_weights.block_ranges(nnz, 500)
    assert [r0 for r0, _ in blocks] == [0] + [r1 for _, r1 in blocks[:-1]] and blocks[-1][1] == 50
    assert len(blocks) > 10 and all(int(nnz[r0:r1].sum()) < 500 + 400 for r0, r1 in blocks)


def test_mask_targets_use():
    """Full-image binary masks cropped to RoIs (one channel, one mask per RoI, adaptive)."""
    gen = torch.Generator().manual_seed(7)
    masks = (torch.rand(5, 1, 60, 80, generator=gen) > 0.5).float()
    rois = torch.cat([torch.arange(5.0)[:, None], random_boxes(gen, 5, 60, 80, False)], dim=1)
    for aligned in (False, True):
        ours = roi_align(masks, rois, 28, 1.0, 0, aligned)
        assert_close(ours, torchvision.ops.roi_align(masks, rois, 28, 1.0, 0, aligned))


def test_low_precision_dtype():
    gen = torch.Generator().manual_seed(8)
    inp = torch.randn(1, 4, 9, 10, generator=gen)
    rois = random_rois(gen, [8], 9, 10)[1]
    ours = roi_align(inp.bfloat16(), rois, 3, 1.0, 2)
    assert ours.dtype == torch.bfloat16
    assert_close(ours.float(), roi_align(inp, rois, 3, 1.0, 2), atol=0.02, rtol=0.02)


def test_bad_arguments():
    inp = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError):
        roi_align(inp, torch.zeros(1, 5), 2, reduction="sum")
    with pytest.raises(ValueError):
        roi_align(inp, torch.zeros(1, 4), 2)
    with pytest.raises(ValueError):
        roi_align(inp[0], torch.zeros(1, 5), 2)
