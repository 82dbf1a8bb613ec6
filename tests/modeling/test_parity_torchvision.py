"""Whole-model parity: torchvision's maskrcnn_resnet50_fpn and ours with the same weights."""

import pytest
import torch

from maskrcnn.structures import Targets
from maskrcnn.testing import (
    our_copy,
    perturbed_torchvision_maskrcnn,
    smooth_random_images,
    torchvision_config,
)

MIN_SIZE, MAX_SIZE = 320, 480


def _images() -> list[torch.Tensor]:
    return smooth_random_images([(240, 320), (300, 220)])


@pytest.fixture(scope="module")
def models():
    tv_model = perturbed_torchvision_maskrcnn(_images(), MIN_SIZE, MAX_SIZE)
    return tv_model, our_copy(tv_model, torchvision_config(MIN_SIZE, MAX_SIZE))


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


def test_optimized_inference_matches_exact_model(models):
    """optimize_for_inference (folded BatchNorm, ReLUs fused into the convolutions,
    channels_last) changes only rounding: each of the top detections has a twin in the
    exact model's output."""
    from torchvision.ops import box_iou

    from maskrcnn.modeling.fusion import FusedBottleneck

    tv_model, ours = models
    fast = our_copy(tv_model, torchvision_config(MIN_SIZE, MAX_SIZE)).optimize_for_inference()
    blocks = [m for m in fast.modules() if type(m).__name__.endswith("Bottleneck")]
    assert len(blocks) == 16 and all(type(m) is FusedBottleneck for m in blocks)
    assert fast.backbone.body.fuse_relu and fast.rpn.head.fuse_relu
    images = _images()
    with torch.no_grad():
        exact = ours.eval()(images)
        optimized = fast(images)
    for exp, act in zip(exact, optimized):
        top = act.scores > act.scores[19]  # the 19 best, well separated from the rest
        iou = box_iou(act.boxes[top], exp.boxes)  # [19, D]
        iou[act.labels[top][:, None] != exp.labels[None, :]] = 0
        best_iou, twin = iou.max(dim=1)
        assert best_iou.min() > 0.99
        torch.testing.assert_close(act.scores[top], exp.scores[twin], atol=1e-3, rtol=0)
        assert _mask_iou(act.masks[top], exp.masks[twin]).min() > 0.95
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fast.train()


def test_optimized_heads_in_chunks_match_whole(models, monkeypatch):
    """The optimized model runs its box and mask heads a chunk of RoIs at a time; the
    detections are those of one call over all RoIs (to rounding)."""
    from maskrcnn.modeling import box_head, roi_heads

    tv_model, _ = models
    fast = our_copy(tv_model, torchvision_config(MIN_SIZE, MAX_SIZE)).optimize_for_inference()
    images = _images()
    with torch.no_grad():
        monkeypatch.setattr(box_head, "BOX_CHUNK", 7)
        monkeypatch.setattr(roi_heads, "MASK_CHUNK", 3)
        chunked = fast(images)
        monkeypatch.setattr(box_head, "BOX_CHUNK", 1 << 30)
        monkeypatch.setattr(roi_heads, "MASK_CHUNK", 1 << 30)
        whole = fast(images)
    for a, b in zip(chunked, whole):
        assert len(a) == len(b) > 3
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
        assert torch.equal(a.labels, b.labels)
        assert _mask_iou(a.masks, b.masks).min() > 0.99
