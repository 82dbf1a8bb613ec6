"""The torchvision v2 architecture (BatchNorm in the body, FPN and heads, two RPN convs, a
conv box head) exported to ONNX and run on ONNX Runtime, against the eager model."""

from __future__ import annotations

import torch

from maskrcnn.deploy import load_exported
from maskrcnn.modeling import build_model
from maskrcnn.testing import smooth_random_images, spread_scores

from .conftest import assert_same_detections, deploy_config


def _v2_model():
    """A small v2 model (ResNet-18, 64 channels) whose BatchNorm layers are not the identity."""
    cfg = deploy_config("torchvision_r50_fpn_v2")
    cfg.roi_heads.box_head_conv_channels = 64
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                channels = module.num_features
                module.weight.copy_(0.8 + 0.4 * torch.rand(channels, generator=gen))
                module.bias.copy_(0.05 * torch.randn(channels, generator=gen))
                module.running_mean.copy_(0.05 * torch.randn(channels, generator=gen))
                module.running_var.copy_(0.8 + 0.4 * torch.rand(channels, generator=gen))
    return spread_scores(model)


def test_v2_on_onnxruntime(tmp_path):
    from maskrcnn.deploy.exporter import export

    model = _v2_model()
    assert model.cfg.roi_heads.box_head_convs == 4 and len(model.rpn.head.extra_convs) == 1
    exported = load_exported(export(model, tmp_path / "v2.onnx", "onnx")[0])
    images = smooth_random_images([(150, 200), (97, 131)], seed=3)
    expected = model.predict(images)
    assert all(len(d) > 10 for d in expected)  # the test means something
    soft = model.predict(images, soft_masks=True)
    for want, got, probs in zip(expected, exported.predict(images), soft):
        assert_same_detections(want, got, soft=probs)
    # the eager model's BatchNorm layers are still there, in eval mode (export copies)
    assert isinstance(model.roi_heads.box_head.convs[0].norm, torch.nn.BatchNorm2d)
