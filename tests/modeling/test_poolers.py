"""MultiLevelRoIAlign against torchvision.ops.MultiScaleRoIAlign and its LevelMapper."""

from __future__ import annotations

import importlib
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch.testing import assert_close
from torchvision.ops.poolers import LevelMapper

from maskrcnn.modeling.poolers import MultiLevelRoIAlign
from maskrcnn.ops.roi_align import roi_align

roi_align_module = importlib.import_module("maskrcnn.ops.roi_align")  # the module

NAMES = ["p2", "p3", "p4", "p5"]
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
IMAGE_HW = (256, 320)


def features(gen: torch.Generator, batch: int = 2, channels: int = 5, levels=range(2, 6)):
    """FPN-like maps of a 256x320 image at strides 2**k: 64x80, 32x40, 16x20, 8x10."""
    return [
        torch.randn(batch, channels, IMAGE_HW[0] >> k, IMAGE_HW[1] >> k, generator=gen,
                    requires_grad=True)
        for k in levels
    ]


def boxes(gen: torch.Generator, k: int) -> torch.Tensor:
    """[k, 4] boxes with sqrt(area) from 4 to 600 px; the first four on levels 2, 3, 4, 5."""
    side = torch.exp(torch.empty(k).uniform_(1.4, 6.4, generator=gen))
    side[:4] = torch.tensor([60.0, 150.0, 300.0, 600.0])[:k]
    aspect = torch.exp(torch.empty(k).uniform_(-0.7, 0.7, generator=gen))
    wh = torch.stack([side * aspect.sqrt(), side / aspect.sqrt()], dim=1)
    centre = torch.rand(k, 2, generator=gen) * torch.tensor([IMAGE_HW[1], IMAGE_HW[0]])
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=1)


def torchvision_levels(box_list, k_min=2, k_max=5):
    return LevelMapper(k_min, k_max)(box_list)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("output_size", [7, 14])
@pytest.mark.parametrize("layout", ["transposed", "by coverage", "gathered", "channels_last",
                                    "mixed"])
def test_matches_multiscale_roi_align(sampling_ratio, output_size, layout, monkeypatch):
    """NCHW levels transposed whole, chosen by coverage, or gathered by pixel; channels_last
    levels read in place (all of them, or P2 and P4 among NCHW levels)."""
    gather_below = {"transposed": 0.0, "gathered": 1.01}.get(layout, 0.75)
    monkeypatch.setattr(roi_align_module, "_GATHER_BELOW", gather_below)
    gen = torch.Generator().manual_seed(sampling_ratio + output_size)
    feats = features(gen)
    if layout in ("channels_last", "mixed"):
        feats = [f.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
                 if layout == "channels_last" or i % 2 == 0 else f
                 for i, f in enumerate(feats)]
    box_list = [boxes(gen, 40), boxes(gen, 27)]
    ours = MultiLevelRoIAlign(output_size, SCALES, sampling_ratio)(feats, box_list)
    reference = torchvision.ops.MultiScaleRoIAlign(NAMES, output_size, sampling_ratio)
    ref = reference(OrderedDict(zip(NAMES, feats)), box_list, [IMAGE_HW, IMAGE_HW])
    assert ours.shape == (67, 5, output_size, output_size)
    assert torchvision_levels(box_list).unique().numel() == 4  # every level is used
    assert_close(ours, ref)
    grad_out = torch.randn(ours.shape, generator=gen)
    for g_ours, g_ref in zip(torch.autograd.grad(ours, feats, grad_out),
                             torch.autograd.grad(ref, feats, grad_out)):
        assert_close(g_ours, g_ref)


def test_aligned_matches_per_level_roi_align():
    """aligned=True (detectron2): torchvision's RoIAlign on the LevelMapper's level."""
    gen = torch.Generator().manual_seed(3)
    feats = features(gen, batch=2)
    box_list = [boxes(gen, 30), boxes(gen, 0)]
    ours = MultiLevelRoIAlign(7, SCALES, 0, aligned=True)(feats, box_list)
    levels = torchvision_levels(box_list)
    rois = torch.cat([torch.zeros(30, 1), box_list[0]], dim=1)
    ref = torch.zeros_like(ours)
    for level, (feat, scale) in enumerate(zip(feats, SCALES)):
        idx = (levels == level).nonzero().squeeze(1)
        ref[idx] = torchvision.ops.roi_align(feat, rois[idx], 7, scale, 0, True)
    assert_close(ours, ref)


def test_max_reduction_is_per_level_max_roi_align():
    gen = torch.Generator().manual_seed(7)
    feats = features(gen, batch=2)
    box_list = [boxes(gen, 12), boxes(gen, 9)]
    pooler = MultiLevelRoIAlign(4, SCALES, 2, reduction="max")
    ours = pooler(feats, box_list)
    levels = pooler.assign_levels(torch.cat(box_list))
    rois = torch.cat([torch.tensor([[0.0]] * 12 + [[1.0]] * 9), torch.cat(box_list)], dim=1)
    for level, (feat, scale) in enumerate(zip(feats, SCALES)):
        idx = (levels == level).nonzero().squeeze(1)
        assert_close(ours[idx], roi_align(feat, rois[idx], 4, scale, 2, reduction="max"))
    assert not torch.allclose(ours, MultiLevelRoIAlign(4, SCALES, 2)(feats, box_list))


def test_assign_levels_is_torchvision_level_mapper():
    gen = torch.Generator().manual_seed(4)
    box_list = [boxes(gen, 200)]
    # sqrt(area) exactly on level boundaries (112, 224, 448), just under and over them
    sides = torch.tensor([56.0, 112.0, 224.0, 448.0, 896.0, 111.99, 224.01, 1.0, 5000.0])
    box_list.append(torch.stack([torch.zeros(9), torch.zeros(9), sides, sides], dim=1))
    # float32 rounding puts sqrt(area) just under 112 and 224: only the eps keeps them up
    box_list.append(torch.tensor([[462.7142639160156, 441.5278625488281, 574.7142333984375,
                                   553.52783203125],
                                  [198.18067932128906, 441.4339904785156, 422.1806640625,
                                   665.4339599609375]]))
    pooler = MultiLevelRoIAlign(7, SCALES, 2)
    ours = pooler.assign_levels(torch.cat(box_list))
    assert ours.dtype == torch.int64
    assert torch.equal(ours, torchvision_levels(box_list))
    assert ours[-11:].tolist() == [0, 1, 2, 3, 3, 0, 2, 0, 3, 1, 2]


def test_three_levels_and_canonical_settings():
    gen = torch.Generator().manual_seed(5)
    feats = features(gen, batch=1, levels=range(3, 6))
    box_list = [boxes(gen, 25)]
    pooler = MultiLevelRoIAlign(5, SCALES[1:], 2, canonical_box_size=160, canonical_level=5)
    ours = pooler(feats, box_list)
    reference = torchvision.ops.MultiScaleRoIAlign(
        NAMES[1:], 5, 2, canonical_scale=160, canonical_level=5
    )
    ref = reference(OrderedDict(zip(NAMES[1:], feats)), box_list, [IMAGE_HW])
    assert_close(ours, ref)
    assert torch.equal(pooler.assign_levels(box_list[0]),
                       LevelMapper(3, 5, 160, 5)(box_list))


@pytest.mark.parametrize("channels_last", [False, True])
def test_unused_levels_get_zero_gradients(channels_last):
    """Only small boxes: P4 and P5 are not read; their gradients are zeros, as in torchvision."""
    gen = torch.Generator().manual_seed(8)
    feats = features(gen)
    if channels_last:
        feats = [f.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
                 for f in feats]
    box_list = [boxes(gen, 20)[4:] * 0.2, boxes(gen, 9)[4:] * 0.2]  # sqrt(area) < 120 px
    ours = MultiLevelRoIAlign(7, SCALES, 2)(feats, box_list)
    ref = torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2)(
        OrderedDict(zip(NAMES, feats)), box_list, [IMAGE_HW, IMAGE_HW]
    )
    assert_close(ours, ref)
    grad_out = torch.randn(ours.shape, generator=gen)
    ours_grads = torch.autograd.grad(ours, feats, grad_out)
    for g_ours, g_ref in zip(ours_grads, torch.autograd.grad(ref, feats, grad_out)):
        assert_close(g_ours, g_ref)
    assert not ours_grads[3].any() and ours_grads[0].any()


def test_empty_boxes():
    gen = torch.Generator().manual_seed(6)
    feats = features(gen)
    pooler = MultiLevelRoIAlign(7, SCALES, 2)
    out = pooler(feats, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert out.shape == (0, 5, 7, 7)
    grads = torch.autograd.grad(out.sum(), feats)
    assert all(torch.equal(g, torch.zeros_like(f)) for g, f in zip(grads, feats))
    one_empty = pooler(feats, [torch.zeros(0, 4), boxes(gen, 3)])
    assert one_empty.shape == (3, 5, 7, 7)


def test_bad_arguments():
    with pytest.raises(ValueError):
        MultiLevelRoIAlign(7, (1 / 4, 1 / 6), 2)
    with pytest.raises(ValueError):
        MultiLevelRoIAlign(7, (1 / 4, 1 / 16), 2)
    pooler = MultiLevelRoIAlign(7, SCALES, 2)
    with pytest.raises(ValueError):
        pooler(features(torch.Generator().manual_seed(0))[:3], [torch.zeros(1, 4)])
