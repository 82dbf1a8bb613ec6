"""Whole-model parity: torchvision's maskrcnn_resnet50_fpn_v2 and ours, its state_dict read
by `load_model` (recognised as v2 from its keys)."""

import copy

import pytest
import torch

from maskrcnn.config import preset_name
from maskrcnn.io.torchvision_weights import convert_torchvision_state_dict
from maskrcnn.io.weights import load_model, load_state_dict_checked, read_model_weights
from maskrcnn.structures import Targets
from maskrcnn.testing import perturbed_torchvision_maskrcnn_v2, smooth_random_images

MIN_SIZE, MAX_SIZE = 256, 384
NUM_CLASSES = 11
# fewer proposals and detections than the defaults, the same in both models: the v2 box
# head's four 3x3 convs on every RoI dominate the time
POST_NMS_TOP_N, DETECTIONS = 200, 40


def _images() -> list[torch.Tensor]:
    return smooth_random_images([(240, 320), (300, 220)])


def _small_settings(model):
    """Our model's settings matching the torchvision model of the fixture (settings that
    the model reads when called, not when built)."""
    cfg = model.cfg
    cfg.input.min_size_train = (MIN_SIZE,)
    cfg.input.min_size_test = MIN_SIZE
    cfg.input.max_size = MAX_SIZE
    cfg.rpn.post_nms_top_n_train = cfg.rpn.post_nms_top_n_test = POST_NMS_TOP_N
    cfg.roi_heads.detections_per_image = DETECTIONS
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tv_model = perturbed_torchvision_maskrcnn_v2(
        _images(), MIN_SIZE, MAX_SIZE, num_classes=NUM_CLASSES,
        rpn_post_nms_top_n_train=POST_NMS_TOP_N, rpn_post_nms_top_n_test=POST_NMS_TOP_N,
        box_detections_per_img=DETECTIONS,
    )
    path = tmp_path_factory.mktemp("tv_v2") / "maskrcnn_resnet50_fpn_v2.pth"
    torch.save(tv_model.state_dict(), path)
    return tv_model, path, _small_settings(load_model(path))


@pytest.fixture(scope="module")
def our_detections(models):
    """Our exact model's detections of `_images()` (eval mode), computed once."""
    with torch.no_grad():
        return models[2].eval()(_images())


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def test_v2_weights_give_the_v2_preset(models):
    tv_model, path, ours = models
    weights = read_model_weights(path)
    assert weights.origin == "torchvision"
    assert preset_name(weights.cfg) == "torchvision_r50_fpn_v2"
    assert weights.cfg.roi_heads.num_classes == NUM_CLASSES
    assert not ours.training
    # torchvision v2 does not freeze BatchNorm: neither do we
    assert isinstance(ours.backbone.body.bn1, torch.nn.BatchNorm2d)
    torch.testing.assert_close(
        ours.roi_heads.box_head.convs[3].norm.running_var,
        tv_model.roi_heads.box_head[3][1].running_var, rtol=0, atol=0)
    torch.testing.assert_close(ours.rpn.head.extra_convs[0].bias,
                               tv_model.rpn.head.conv[1][0].bias, rtol=0, atol=0)
    torch.testing.assert_close(ours.roi_heads.box_head.fc1.weight,
                               tv_model.roi_heads.box_head[5].weight, rtol=0, atol=0)
    # a v2 file without BatchNorm's num_batches_tracked (e.g. re-saved elsewhere) still fits
    state = {k: v for k, v in tv_model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    load_state_dict_checked(copy.deepcopy(ours), convert_torchvision_state_dict(state), "x")


def test_eval_detections_equal(models, our_detections):
    tv_model = models[0]
    images = _images()
    with torch.no_grad():
        expected = tv_model.eval()(images)
    actual = our_detections
    for exp, act, image in zip(expected, actual, images):
        assert len(exp["boxes"]) >= 10, "the fixture should give a spread of detections"
        assert exp["scores"][0] - exp["scores"][-1] > 0.1
        assert len(act) == len(exp["boxes"])
        torch.testing.assert_close(act.boxes, exp["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(act.scores, exp["scores"], atol=1e-4, rtol=0)
        assert torch.equal(act.labels, exp["labels"])
        assert act.masks.shape == (len(act), *image.shape[-2:])
        assert act.masks.dtype == torch.bool
        assert _mask_iou(act.masks, exp["masks"][:, 0] > 0.5).min() > 0.99


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
        labels = torch.randint(1, NUM_CLASSES, (count,), generator=gen)
        targets.append(Targets(boxes, labels, masks))
    return targets


def test_train_losses_equal(models):
    """Training mode: every BatchNorm (body, FPN, box and mask heads) normalises with the
    batch's statistics in both models. Copies, so the fixture's running statistics stay."""
    tv_model, _, ours = (copy.deepcopy(m) for m in models)
    tv_model.train()
    ours.train()
    images = _images()
    targets = _targets(images)
    tv_targets = [{"boxes": t.boxes, "labels": t.labels, "masks": t.masks} for t in targets]
    with torch.no_grad():  # the loss values do not need the graph
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
    # the running statistics moved the same way (momentum 0.1 in both)
    torch.testing.assert_close(ours.roi_heads.mask_head.convs[0].norm.running_mean,
                               tv_model.roi_heads.mask_head[0][1].running_mean,
                               rtol=1e-4, atol=1e-5)


def test_optimized_inference_matches_exact_model(models, our_detections):
    """optimize_for_inference (BatchNorm in eval mode, channels_last) changes only rounding:
    each of the top detections has a twin in the exact model's output."""
    from torchvision.ops import box_iou

    fast = _small_settings(load_model(models[1])).optimize_for_inference()
    with torch.no_grad():
        optimized = fast(_images())
    for exp, act in zip(our_detections, optimized):
        top = act.scores > act.scores[19]  # the 19 best, well separated from the rest
        iou = box_iou(act.boxes[top], exp.boxes)  # [19, D]
        iou[act.labels[top][:, None] != exp.labels[None, :]] = 0
        best_iou, twin = iou.max(dim=1)
        assert best_iou.min() > 0.99
        torch.testing.assert_close(act.scores[top], exp.scores[twin], atol=1e-3, rtol=0)
        assert _mask_iou(act.masks[top], exp.masks[twin]).min() > 0.95
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fast.train()


def test_head_options_on_a_tiny_model():
    """GroupNorm heads (detectron2's "4conv1fc" style) train and predict; unknown norms are
    refused with the layer's name; the default heads keep their v1 keys."""
    from maskrcnn.modeling import build_model
    from tests.conftest import tiny_config

    cfg = tiny_config()
    cfg.rpn.head_convs = 2
    cfg.roi_heads.box_head_convs = 2
    cfg.roi_heads.box_head_conv_channels = 64
    cfg.roi_heads.box_head_norm = "gn"
    cfg.roi_heads.box_head_fcs = 1
    cfg.roi_heads.mask_head_norm = "gn"
    torch.manual_seed(0)
    model = build_model(cfg)
    keys = set(model.state_dict())
    assert {"roi_heads.box_head.convs.1.norm.weight", "roi_heads.box_head.fc1.weight",
            "roi_heads.mask_head.convs.3.norm.bias", "rpn.head.extra_convs.0.weight"} <= keys
    assert "roi_heads.box_head.fc2.weight" not in keys
    assert "roi_heads.box_head.convs.0.bias" not in keys  # no bias before a norm
    images = smooth_random_images([(96, 128)])
    masks = torch.zeros(1, 96, 128, dtype=torch.uint8)
    masks[0, 20:60, 30:90] = 1
    target = Targets(torch.tensor([[30.0, 20.0, 90.0, 60.0]]), torch.tensor([2]), masks)
    losses = model(images, [target])
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(model.eval()(images)) == 1

    default_keys = set(build_model(tiny_config()).state_dict())
    assert {"rpn.head.conv.weight", "roi_heads.box_head.fc2.weight",
            "roi_heads.mask_head.convs.0.bias"} <= default_keys
    assert not any("extra_convs" in k or "box_head.convs" in k or "mask_head.convs.0.norm" in k
                   for k in default_keys)
    for field, message in (("box_head_norm", "box head norm"),
                           ("mask_head_norm", "mask head norm")):
        bad = tiny_config()
        setattr(bad.roi_heads, field, "syncbn")
        with pytest.raises(ValueError, match=message):
            build_model(bad)
