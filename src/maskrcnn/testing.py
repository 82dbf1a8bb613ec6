"""Reference models for parity tests and benchmarks (needs torchvision's detection models).

No weights can be downloaded, so the reference is torchvision's maskrcnn_resnet50_fpn (or
maskrcnn_resnet50_fpn_v2) with seeded random weights, perturbed so that it behaves like a
trained model: BatchNorm statistics calibrated on the given images (features of unit scale
instead of random-init blow-ups), then (v1) frozen as torchvision does for pretrained
weights; objectness and class logits scaled so that scores spread and detections are not
near-ties.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import ModelConfig, preset
from .io.torchvision_weights import convert_torchvision_state_dict
from .io.weights import load_state_dict_checked


def freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d by torchvision's FrozenBatchNorm2d (same statistics), as
    maskrcnn_resnet50_fpn builds its backbone when given pretrained weights."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)


def _randomize_batchnorm(model: nn.Module) -> None:
    """Random affine parameters and reset statistics; momentum None, so the next train-mode
    forward sets the running statistics to that batch's."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # running stats = plain average over the batch
                module.reset_running_stats()
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)


def _spread_torchvision_scores(model: nn.Module) -> None:
    with torch.no_grad():
        model.rpn.head.cls_logits.weight.mul_(10)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.06)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.01)
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(3)


def perturbed_torchvision_maskrcnn(
    calibration_images: Sequence[Tensor], min_size: int = 800, max_size: int = 1333, seed: int = 0
) -> nn.Module:
    """torchvision maskrcnn_resnet50_fpn (v1) with perturbed seeded weights, in eval mode."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(seed)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=min_size, max_size=max_size
    )
    _randomize_batchnorm(model)
    with torch.no_grad():
        model.train()
        model.backbone(model.transform(list(calibration_images))[0].tensors)
        model.eval()
    freeze_batchnorm(model)
    _spread_torchvision_scores(model)
    return model


def perturbed_torchvision_maskrcnn_v2(
    calibration_images: Sequence[Tensor], min_size: int = 800, max_size: int = 1333,
    seed: int = 0, num_classes: int = 91, **kwargs,
) -> nn.Module:
    """torchvision maskrcnn_resnet50_fpn_v2 with perturbed seeded weights, in eval mode.

    Its BatchNorm layers stay nn.BatchNorm2d (v2 never freezes them), calibrated stage by
    stage on the images: body and FPN, then the box head on the RPN's proposals, then the
    mask head on the best 100 proposals per image; momentum is back to 0.1 afterwards.
    Every conv and linear bias is small random noise, so that misplaced biases show.
    kwargs go to torchvision's builder (e.g. rpn_post_nms_top_n_test, for speed).
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    torch.manual_seed(seed)
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None,
                                     num_classes=num_classes, min_size=min_size,
                                     max_size=max_size, **kwargs)
    _randomize_batchnorm(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                if module.bias is not None:
                    module.bias.normal_(0, 0.01)
        model.eval()
        images, _ = model.transform(list(calibration_images))
        model.backbone.train()
        model.backbone(images.tensors)
        model.backbone.eval()
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        heads = model.roi_heads
        heads.box_head.train()
        heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes))
        heads.mask_head.train()
        best = [p[:100] for p in proposals]
        heads.mask_head(heads.mask_roi_pool(features, best, images.image_sizes))
        model.eval()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
    _spread_torchvision_scores(model)
    return model


def torchvision_config(min_size: int = 800, max_size: int = 1333,
                       name: str = "torchvision_r50_fpn") -> ModelConfig:
    """The torchvision preset `name` (v1 or "torchvision_r50_fpn_v2") at these sizes."""
    cfg = preset(name)
    cfg.input.min_size_train = (min_size,)
    cfg.input.min_size_test = min_size
    cfg.input.max_size = max_size
    return cfg


def our_copy(tv_model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Our model with the torchvision model's weights."""
    from .modeling import build_model

    model = build_model(cfg)
    state = convert_torchvision_state_dict(tv_model.state_dict())
    load_state_dict_checked(model, state, "torchvision model")
    return model


def smooth_random_images(sizes: Sequence[tuple[int, int]], seed: int = 1) -> list[Tensor]:
    """Smooth random RGB images in [0, 1] (smooth, so features are not noise)."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for height, width in sizes:
        coarse = torch.rand(1, 3, max(height // 16, 2), max(width // 16, 2), generator=gen)
        image = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]
        images.append(image.clamp(0, 1))
    return images


def spread_scores(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb a randomly initialised model of ours in place so that it behaves more like a
    trained one: sharper objectness, class scores spread over [0, 1] (not all near
    1 / num_classes), small box refinements, confident masks. Returns the model."""
    gen = torch.Generator().manual_seed(seed)
    heads = model.roi_heads
    with torch.no_grad():
        model.rpn.head.objectness_logits.weight.mul_(10)
        cls = heads.box_head.cls_score.weight
        cls.copy_(torch.randn(cls.shape, generator=gen) * 0.2)
        deltas = heads.box_head.bbox_pred.weight
        deltas.copy_(torch.randn(deltas.shape, generator=gen) * 0.01)
        heads.mask_head.predictor.weight.mul_(3)
        # mask logits far from 0 (p = 0.5, the threshold) over whole regions, where
        # rounding differences of 1e-6 would flip pixels: a trained model's mask
        # probabilities cross 0.5 steeply, at the object's outline
        bias = heads.mask_head.predictor.bias
        bias.copy_(torch.randn(bias.shape, generator=gen).abs() + 1.5)
    return model
