"""backbone.groups / width_per_group: ResNeXt bodies, torchvision's blocks and key names."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close

from maskrcnn.config import BackboneConfig, ModelConfig
from maskrcnn.modeling import build_model
from maskrcnn.modeling.backbone import ResNetBody, build_backbone


def test_resnext101_32x8d_is_torchvisions():
    torch.manual_seed(0)
    reference = torchvision.models.resnext101_32x8d(weights=None).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # statistics that matter
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
    expected = {k: v for k, v in reference.state_dict().items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    body = ResNetBody(101, groups=32, width_per_group=8).eval()
    ours = {k: v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sorted(ours) == sorted(expected)
    assert all(ours[k].shape == v.shape for k, v in expected.items())
    assert body.layer2[0].conv2.groups == 32 and body.layer2[0].conv2.out_channels == 512
    body.load_state_dict(expected)
    image = torch.rand(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        features = body(image)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(image))))
        for stage, feature in zip((reference.layer1, reference.layer2, reference.layer3,
                                   reference.layer4), features):
            x = stage(x)
            assert_close(feature, x, rtol=1e-4, atol=1e-4)
    assert features[-1].shape == (1, 2048, 2, 2)
    del reference, body


def test_groups_from_the_config():
    cfg = BackboneConfig()
    assert (cfg.groups, cfg.width_per_group, cfg.kind) == (1, 64, "fpn")
    with torch.device("meta"):
        backbone = build_backbone(BackboneConfig(depth=50, groups=4, width_per_group=16))
    conv = backbone.body.layer3[1].conv2
    assert conv.groups == 4 and conv.in_channels == conv.out_channels == 4 * 16 * 4
    model_cfg = ModelConfig()
    model_cfg.backbone.depth, model_cfg.backbone.kind = 101, "c4"
    model_cfg.backbone.groups, model_cfg.backbone.width_per_group = 32, 8
    with torch.device("meta"):
        model = build_model(model_cfg)  # X-101-C4: res5 is ResNeXt's layer4 too
    assert model.roi_heads.res5[0].conv2.groups == 32
    assert model.roi_heads.res5[0].conv2.out_channels == 32 * 8 * 8
    assert len(model.backbone.body.layer3) == 23


@pytest.mark.parametrize("groups,width", [(32, 8), (1, 32)])
def test_basic_blocks_refuse_groups(groups, width):
    with pytest.raises(ValueError, match=r"backbone\.groups.*backbone\.width_per_group"):
        build_backbone(BackboneConfig(depth=18, groups=groups, width_per_group=width))
    with pytest.raises(ValueError, match=r"backbone\.groups"):
        build_backbone(BackboneConfig(depth=50, groups=0))
