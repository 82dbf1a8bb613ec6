"""Whole-model parity: torchvision's maskrcnn_resnet50_fpn and ours with the same weights."""

import pytest
import torch
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from maskrcnn.config import preset
from maskrcnn.io.weights import convert_torchvision_state_dict, load_state_dict_checked
from maskrcnn.modeling import build_model
from maskrcnn.structures import Targets

MIN_SIZE, MAX_SIZE = 320, 480


def _perturbed_torchvision_model() -> nn.Module:
    """Seeded random weights, perturbed so that scores spread and detections are not ties:
    BatchNorm statistics calibrated on the test images (so features are of unit scale, not
    random-init blow-ups), objectness and class logits scaled up."""
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # running stats = plain average over the batch
                module.reset_running_stats()
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
        model.train()
        model.backbone(model.transform(_images())[0].tensors)
        model.eval()
    _freeze_batchnorm(model)
    with torch.no_grad():
        model.rpn.head.cls_logits.weight.mul_(10)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.06)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.01)
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(3)
    return model


def _freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm2d -> torchvision's FrozenBatchNorm2d, as maskrcnn_resnet50_fpn builds it
    when given pretrained weights."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def _our_model(tv_model: nn.Module) -> nn.Module:
    cfg = preset("torchvision_r50_fpn")
    cfg.input.min_size_train = (MIN_SIZE,)
    cfg.input.min_size_test = MIN_SIZE
    cfg.input.max_size = MAX_SIZE
    model = build_model(cfg)
    state = convert_torchvision_state_dict(tv_model.state_dict())
    load_state_dict_checked(model, state, "torchvision model")
    return model


def _images() -> list[torch.Tensor]:
    """Two smooth random images of different sizes (smooth, so features are not noise)."""
    gen = torch.Generator().manual_seed(1)
    images = []
    for height, width in [(240, 320), (300, 220)]:
        coarse = torch.rand(1, 3, height // 16, width // 16, generator=gen)
        image = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]
        images.append(image.clamp(0, 1))
    return images


@pytest.fixture(scope="module")
def models():
    tv_model = _perturbed_torchvision_model()
    return tv_model, _our_model(tv_model)


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def test_eval_detections_equal(models):
    tv_model, ours = models
    tv_model.eval()
    ours.eval()
    images = _images()
    with torch.no_grad():
        expected = tv_model(images)
        actual = ours(images)
    for exp, act, image in zip(expected, actual, images):
        assert len(exp["boxes"]) >= 10, "the fixture should give a spread of detections"
        assert exp["scores"][0] - exp["scores"][-1] > 0.1
        assert len(act) == len(exp["boxes"])
        torch.testing.assert_close(act.boxes, exp["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(act.scores, exp["scores"], atol=1e-4, rtol=0)
        assert torch.equal(act.labels, exp["labels"])
        assert act.masks.shape == (len(act), *image.shape[-2:])
        assert act.masks.dtype == torch.bool
        iou = _mask_iou(act.masks, exp["masks"][:, 0] > 0.5)
        assert iou.min() > 0.99


def _targets(images: list[torch.Tensor]) -> list[Targets]:
    gen = torch.Generator().manual_seed(2)
    targets = []
    for image, count in zip(images, [3, 2]):
        height, width = image.shape[-2:]
        xy = torch.rand(count, 2, generator=gen) * torch.tensor([width * 0.6, height * 0.6])
        wh = 20 + torch.rand(count, 2, generator=gen) * torch.tensor([width * 0.3, height * 0.3])
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(count, height, width, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[i, y1 + 3 : y2 - 3, x1 + 3 : x2 - 3] = 1  # loop over a few fixture objects
        labels = torch.randint(1, 91, (count,), generator=gen)
        targets.append(Targets(boxes, labels, masks))
    return targets


def test_train_losses_equal(models):
    tv_model, ours = models
    tv_model.train()
    ours.train()
    images = _images()
    targets = _targets(images)
    tv_targets = [{"boxes": t.boxes, "labels": t.labels, "masks": t.masks} for t in targets]
    torch.manual_seed(123)  # the same seed draws the same anchors and RoIs in both
    expected = tv_model(images, tv_targets)
    torch.manual_seed(123)
    actual = ours(images, targets)
    names = {
        "loss_objectness": "loss_rpn_objectness",
        "loss_rpn_box_reg": "loss_rpn_box",
        "loss_classifier": "loss_cls",
        "loss_box_reg": "loss_box",
        "loss_mask": "loss_mask",
    }
    assert set(actual) == set(names.values())
    for tv_name, our_name in names.items():
        torch.testing.assert_close(actual[our_name], expected[tv_name], rtol=1e-4, atol=1e-5)
    assert all(v.item() > 0 for v in actual.values())
