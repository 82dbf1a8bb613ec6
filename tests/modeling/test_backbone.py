"""Backbone (ResNet body + FPN) against torchvision's resnet_fpn_backbone."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from maskrcnn.config import BackboneConfig
from maskrcnn.io.torchvision_weights import map_torchvision_backbone_key
from maskrcnn.modeling.backbone import (
    Backbone,
    FrozenBatchNorm2d,
    build_backbone,
    fold_frozen_batchnorm,
)
from maskrcnn.modeling.fpn import FPN


def _randomise_frozen_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Give every frozen BN (ours or torchvision's) non-identity statistics."""
    for module in model.modules():
        if isinstance(module, (FrozenBatchNorm2d, torchvision.ops.misc.FrozenBatchNorm2d)):
            c = module.weight.numel()
            module.weight.copy_(0.5 + torch.rand(c, generator=generator))
            module.bias.copy_(0.1 * torch.randn(c, generator=generator))
            module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(c, generator=generator))


def _assert_close_scaled(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Float32 round-off grows with the activations' scale (hundreds after 50 random layers):
    compare with a tolerance relative to the largest magnitude."""
    assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().amax().item())


def _map_state(reference_state: dict, prefix: str = "backbone.") -> dict:
    """Map a torchvision BackboneWithFPN / FPN state_dict to our key names."""
    mapped = {}
    for key, value in reference_state.items():
        ours = map_torchvision_backbone_key(prefix + key)
        assert ours.startswith(prefix)
        mapped[ours[len(prefix):]] = value
    return mapped


@pytest.fixture(scope="module")
def r50_pair():
    """(torchvision resnet_fpn_backbone R50, our R50 backbone) with the same weights."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    reference = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                    norm_layer=torchvision.ops.misc.FrozenBatchNorm2d,
                                    trainable_layers=3)
    with torch.no_grad():
        _randomise_frozen_bn(reference, generator)
        for name, parameter in reference.fpn.named_parameters():
            if name.endswith("bias"):  # zero at init: make the key mapping matter
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    ours = build_backbone(BackboneConfig(depth=50, norm="frozen_bn", trainable_layers=3))
    ours.load_state_dict(_map_state(reference.state_dict()), strict=True)
    return reference.eval(), ours.eval()


def test_r50_fpn_matches_torchvision(r50_pair):
    reference, ours = r50_pair
    x = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    assert list(expected) == ["0", "1", "2", "3", "pool"]
    assert len(got) == 5
    for level, (name, stride) in enumerate(zip(expected, Backbone.strides)):
        shape = (2, 256, math.ceil(128 / stride), math.ceil(160 / stride))
        assert got[level].shape == shape
        assert got[level].abs().amax() > 0
        _assert_close_scaled(got[level], expected[name])
    assert ours.out_channels == 256


def test_trainable_layers_r50_frozen_bn(r50_pair):
    reference, ours = r50_pair
    expected = {k: p.requires_grad for k, p in reference.named_parameters()}
    got = {k: p.requires_grad for k, p in ours.named_parameters()}
    assert got.keys() == _map_state(expected).keys()
    assert got == _map_state(expected)


@pytest.mark.parametrize("trainable_layers", [0, 1, 2, 3, 4, 5])
def test_trainable_layers_match_torchvision(trainable_layers):
    reference = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                    norm_layer=nn.BatchNorm2d,
                                    trainable_layers=trainable_layers)
    ours = build_backbone(BackboneConfig(depth=18, norm="bn", trainable_layers=trainable_layers,
                                         fpn_channels=256))
    expected = {k: p.requires_grad for k, p in reference.body.named_parameters()}
    got = {k: p.requires_grad for k, p in ours.body.named_parameters()}
    assert got == expected
    assert sum(got.values()) > 0 if trainable_layers > 0 else not any(got.values())
    assert all(p.requires_grad for p in ours.fpn.parameters())


def test_trainable_layers_out_of_range():
    with pytest.raises(ValueError, match="trainable_layers"):
        build_backbone(BackboneConfig(depth=18, trainable_layers=6))


def test_r18_group_norm_builds_runs_and_backprops():
    torch.manual_seed(0)
    cfg = BackboneConfig(depth=18, norm="gn", trainable_layers=5, fpn_channels=64, fpn_norm="gn")
    backbone = build_backbone(cfg).train()
    assert isinstance(backbone.body.bn1, nn.GroupNorm)
    assert isinstance(backbone.fpn.lateral_convs[0].norm, nn.GroupNorm)
    assert backbone.fpn.lateral_convs[0].bias is None
    x = torch.randn(2, 3, 64, 96)
    outputs = backbone(x)
    assert [tuple(o.shape) for o in outputs] == [
        (2, 64, math.ceil(64 / s), math.ceil(96 / s)) for s in backbone.strides
    ]
    sum(o.square().mean() for o in outputs).backward()
    for name, parameter in backbone.named_parameters():
        assert parameter.requires_grad, name
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert backbone.body.conv1.weight.grad.abs().sum() > 0


def test_fpn_group_norm_matches_torchvision():
    torch.manual_seed(0)
    channels = [64, 128, 256, 512]
    reference = FeaturePyramidNetwork(channels, 64, norm_layer=partial(nn.GroupNorm, 32)).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if ".1." in name:  # GroupNorm affine: away from identity
                parameter.copy_(torch.randn(parameter.shape))
    ours = FPN(channels, 64, norm="gn").eval()
    ours.load_state_dict(_map_state(reference.state_dict(), "backbone.fpn."), strict=True)
    features = [torch.randn(1, c, 32 // 2**i, 40 // 2**i) for i, c in enumerate(channels)]
    expected = list(reference({str(i): f for i, f in enumerate(features)}).values())
    got = ours(features)
    assert len(got) == 5
    for level in range(4):
        assert_close(got[level], expected[level])
    assert got[4].shape == (1, 64, 2, 3)
    assert_close(got[4], got[3][:, :, ::2, ::2])


def test_frozen_batchnorm_matches_torchvision_and_loads_bn_keys():
    generator = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        for tensor in (bn.weight, bn.bias, bn.running_mean):
            tensor.copy_(torch.randn(8, generator=generator))
        bn.running_var.copy_(0.5 + torch.rand(8, generator=generator))
    ours = FrozenBatchNorm2d(8)
    ours.load_state_dict(bn.state_dict(), strict=True)  # has num_batches_tracked
    reference = torchvision.ops.misc.FrozenBatchNorm2d(8)
    reference.load_state_dict(bn.state_dict())
    x = torch.randn(2, 8, 5, 7, generator=generator)
    assert_close(ours(x), reference(x))
    assert_close(ours(x), bn.eval()(x))
    assert set(ours.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    assert list(ours.parameters()) == []
    assert ours(x.double()).dtype == torch.float64


def test_fold_frozen_batchnorm_keeps_outputs(r50_pair):
    _, ours = r50_pair
    folded = fold_frozen_batchnorm(copy.deepcopy(ours))
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    # stem + 16 blocks x 3 convs + 4 downsample convs
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) == 1 + 16 * 3 + 4
    assert folded.body.conv1.bias is not None
    assert folded.body.layer1[0].downsample[0].bias is not None
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ours(x)
        got = folded(x)
    for level in range(5):
        _assert_close_scaled(got[level], expected[level])


# backbone.pretrained (reading ImageNet bodies) is tested in tests/io/test_pretrained.py


def test_torchvision_key_mapping_covers_maskrcnn_resnet50_fpn():
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None,
                                                               weights_backbone=None)
    theirs = {map_torchvision_backbone_key(k) for k in model.state_dict()
              if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    ours = build_backbone(BackboneConfig())
    assert theirs == {"backbone." + k for k in ours.state_dict()}
    assert map_torchvision_backbone_key("backbone.fpn.inner_blocks.2.weight") == (
        "backbone.fpn.lateral_convs.2.weight")
    assert map_torchvision_backbone_key("backbone.fpn.layer_blocks.3.0.bias") == (
        "backbone.fpn.output_convs.3.bias")
    assert map_torchvision_backbone_key("backbone.fpn.layer_blocks.1.bias") == (
        "backbone.fpn.output_convs.1.bias")
    for key in ("rpn.head.conv.0.0.weight", "roi_heads.box_head.fc6.weight",
                "backbone.body.layer1.0.downsample.1.running_var"):
        assert map_torchvision_backbone_key(key) == key


def test_unknown_options_raise():
    with pytest.raises(ValueError, match="depth"):
        build_backbone(BackboneConfig(depth=42))
    with pytest.raises(ValueError, match="norm"):
        build_backbone(BackboneConfig(depth=18, norm="syncbn"))
    with pytest.raises(ValueError, match="FPN norm"):
        build_backbone(BackboneConfig(depth=18, fpn_norm="syncbn"))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(64, 96), (50, 70)])  # exact halves; odd sizes
def test_fpn_inference_top_down_equals_the_autograd_path(size, channels_last):
    """Without autograd the top-down sum adds in place through a broadcast view (exact
    halves only); its outputs are bit-identical to interpolate + add."""
    torch.manual_seed(0)
    fpn = FPN([16, 32, 64, 128], 32).eval()
    height, width = size
    features = [torch.randn(2, c, math.ceil(height / 2**i), math.ceil(width / 2**i))
                for i, c in enumerate([16, 32, 64, 128])]
    if channels_last:
        fpn = fpn.to(memory_format=torch.channels_last)
        features = [f.contiguous(memory_format=torch.channels_last) for f in features]
    expected = fpn(features)  # grad mode: F.interpolate + add
    with torch.no_grad():
        actual = fpn(features)
    for exp, act in zip(expected, actual):
        assert torch.equal(exp, act)


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "resnext"])
def test_resnet_blocks_are_torchvisions(kind):
    """Our blocks (resnet_blocks.py) against torchvision.models.resnet's: the same seed
    gives the same initial weights and keys, and the same input the same output."""
    from torchvision.models import resnet as tv

    from maskrcnn.modeling import resnet_blocks as ours

    def build(module):
        torch.manual_seed(0)
        down = nn.Sequential(nn.Conv2d(32, 64, 1, stride=2, bias=False), nn.BatchNorm2d(64))
        if kind == "basic":
            return module.BasicBlock(32, 64, stride=2, downsample=down)
        width = {"groups": 4, "base_width": 8} if kind == "resnext" else {}
        return module.Bottleneck(32, 16, stride=2, downsample=down, **width)

    theirs, mine = build(tv).eval(), build(ours).eval()
    assert list(mine.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(mine.state_dict()[key], value), key
    x = torch.randn(2, 32, 20, 24)
    assert torch.equal(mine(x), theirs(x))


def test_fpn_release_inputs_frees_the_levels_and_keeps_the_outputs():
    torch.manual_seed(0)
    fpn = FPN([16, 32, 64, 128], 32).eval()
    features = [torch.randn(1, c, 64 // 2**i, 96 // 2**i) for i, c in enumerate([16, 32, 64, 128])]
    with torch.no_grad():
        expected = fpn(list(features))
        given = list(features)
        got = fpn(given, release_inputs=True)
    assert given == [None] * 4  # read and let go
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
