"""backbone.stride_in_1x1: MSRA / detectron2 bottlenecks subsample in their first 1x1 conv."""

from __future__ import annotations

import torch

from maskrcnn.config import BackboneConfig, preset
from maskrcnn.modeling.backbone import build_backbone


def _strides(body, layer: str, block: int) -> tuple[tuple[int, int], ...]:
    b = getattr(body, layer)[block]
    return tuple(tuple(conv.stride) for conv in (b.conv1, b.conv2, b.conv3))


def test_stride_in_1x1_moves_the_stride_of_each_first_block():
    msra = build_backbone(BackboneConfig(depth=50, fpn_channels=32, stride_in_1x1=True)).body
    tv = build_backbone(BackboneConfig(depth=50, fpn_channels=32)).body
    for layer in ("layer2", "layer3", "layer4"):
        assert _strides(msra, layer, 0) == ((2, 2), (1, 1), (1, 1)), layer
        assert _strides(tv, layer, 0) == ((1, 1), (2, 2), (1, 1)), layer
        assert tuple(getattr(msra, layer)[0].downsample[0].stride) == (2, 2)
        for body in (msra, tv):  # later blocks never subsample
            assert _strides(body, layer, 1) == ((1, 1), (1, 1), (1, 1))
    assert _strides(msra, "layer1", 0) == ((1, 1), (1, 1), (1, 1))  # stride 1 stage
    assert preset("detectron2_r50_fpn").backbone.stride_in_1x1
    assert not preset("torchvision_r50_fpn").backbone.stride_in_1x1


def test_stride_in_1x1_changes_features_not_shapes():
    torch.manual_seed(0)
    msra = build_backbone(BackboneConfig(depth=50, fpn_channels=32, stride_in_1x1=True)).eval()
    tv = build_backbone(BackboneConfig(depth=50, fpn_channels=32)).eval()
    tv.load_state_dict(msra.state_dict())  # same weights, only the strides differ
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, other = msra(x), tv(x)
    for level, (a, b) in enumerate(zip(got, other)):
        assert a.shape == b.shape == (1, 32, 16 // 2**level, 32 // 2**level)
    assert torch.equal(msra.body.layer1(msra.body.maxpool(msra.body.relu(msra.body.bn1(
        msra.body.conv1(x))))), tv.body.layer1(tv.body.maxpool(tv.body.relu(tv.body.bn1(
            tv.body.conv1(x))))))  # identical up to the first strided block
    assert not torch.allclose(got[1], other[1], atol=1e-3)


def test_stride_in_1x1_leaves_basic_blocks_alone():
    a = build_backbone(BackboneConfig(depth=18, fpn_channels=32, stride_in_1x1=True)).body
    b = build_backbone(BackboneConfig(depth=18, fpn_channels=32)).body
    for layer in ("layer2", "layer3", "layer4"):
        first_a, first_b = getattr(a, layer)[0], getattr(b, layer)[0]
        assert tuple(first_a.conv1.stride) == tuple(first_b.conv1.stride) == (2, 2)
