"""roi_heads.mask_loss: softmax and roi_heads.class_agnostic_mask (the paper's Table 2b and
2a) change what they should, on hand-made logits whose losses are computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from maskrcnn.modeling import build_model
from maskrcnn.modeling.mask_head import MaskHead
from tests.conftest import tiny_config

LN2, LN3 = math.log(2.0), math.log(3.0)


def mask_head(**settings) -> MaskHead:
    cfg = tiny_config(num_classes=3)
    for key, value in settings.items():
        setattr(cfg.roi_heads, key, value)
    return build_model(cfg).roi_heads.mask_head


def hand_logits() -> torch.Tensor:
    """[2 RoIs, 3 classes, 2, 2]. RoI 0: top row (0, 0, ln 2) -> softmax (1/4, 1/4, 1/2),
    bottom row (ln 3, 0, 0) -> (3/5, 1/5, 1/5). RoI 1: all zero -> 1/3 each."""
    logits = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    logits[0, 2, 0, :] = LN2
    logits[0, 0, 1, :] = LN3
    return logits


# RoI 0 of class 2: on, off / off (0.4), on (0.6); RoI 1 of class 1: all on.
TARGETS = torch.tensor([[[1.0, 0.0], [0.4, 0.6]], [[1.0, 1.0], [1.0, 1.0]]],
                       dtype=torch.float64)
LABELS = torch.tensor([2, 1])


def test_softmax_is_a_per_pixel_multinomial_over_the_classes():
    head = mask_head(mask_loss="softmax")
    assert head.predictor.out_channels == 3
    loss = head.losses(hand_logits(), TARGETS, LABELS)["loss_mask"]
    # on pixels: -log p(class); off pixels: -log p(background = 0)
    per_pixel = [LN2, math.log(4.0), math.log(5 / 3), math.log(5.0)] + [LN3] * 4
    assert_close(loss, torch.tensor(sum(per_pixel) / 8, dtype=torch.float64))
    # coupled: another class's logit changes the loss (it competes in the softmax)
    other = hand_logits()
    other[0, 1] += 1.0
    assert head.losses(other, TARGETS, LABELS)["loss_mask"] > loss


def test_sigmoid_uses_only_the_ground_truth_class():
    head = mask_head()
    loss = head.losses(hand_logits(), TARGETS, LABELS)["loss_mask"]
    # RoI 0, channel 2: sigmoid(ln 2) = 2/3 (t = 1, 0), sigmoid(0) = 1/2 (t = 0.4, 0.6)
    per_pixel = [math.log(1.5), LN3, LN2, LN2] + [LN2] * 4
    assert_close(loss, torch.tensor(sum(per_pixel) / 8, dtype=torch.float64))
    other = hand_logits()
    other[0, 1] += 1.0
    other[1, 0] -= 2.0
    assert_close(head.losses(other, TARGETS, LABELS)["loss_mask"], loss, rtol=0, atol=0)


def test_inference_takes_the_predicted_class():
    logits = hand_logits()[:1]  # [1, 3, 2, 2]
    softmax = mask_head(mask_loss="softmax")
    assert_close(softmax.inference(logits, torch.tensor([2])),
                 torch.tensor([[[0.5, 0.5], [0.2, 0.2]]], dtype=torch.float64))
    assert_close(softmax.inference(logits, torch.tensor([1])),
                 torch.tensor([[[0.25, 0.25], [0.2, 0.2]]], dtype=torch.float64))
    sigmoid = mask_head()
    assert_close(sigmoid.inference(logits, torch.tensor([2])),
                 torch.tensor([[[2 / 3, 2 / 3], [0.5, 0.5]]], dtype=torch.float64))
    assert_close(sigmoid.inference(logits, torch.tensor([0])),
                 torch.tensor([[[0.5, 0.5], [0.75, 0.75]]], dtype=torch.float64))


def test_class_agnostic_is_one_mask_for_every_class():
    head = mask_head(class_agnostic_mask=True)
    assert head.predictor.out_channels == 1
    logits = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    logits[0, 0] = torch.tensor([[LN3, 0.0], [0.0, -LN3]])  # sigmoid 3/4, 1/2, 1/2, 1/4
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]],
                           dtype=torch.float64)
    loss = head.losses(logits, targets, LABELS)["loss_mask"]
    per_pixel = [math.log(4 / 3), LN2, LN2, math.log(4 / 3)] + [LN2] * 4
    assert_close(loss, torch.tensor(sum(per_pixel) / 8, dtype=torch.float64))
    assert_close(head.losses(logits, targets, torch.tensor([1, 2]))["loss_mask"], loss,
                 rtol=0, atol=0)
    probs = head.inference(logits, torch.tensor([2, 1]))
    assert_close(probs, logits[:, 0].sigmoid(), rtol=0, atol=0)
    assert_close(head.inference(logits, torch.tensor([1, 1])), probs, rtol=0, atol=0)


def test_softmax_cannot_be_class_agnostic():
    with pytest.raises(ValueError, match="class-agnostic"):
        mask_head(mask_loss="softmax", class_agnostic_mask=True)


@pytest.mark.parametrize("settings", [{"mask_loss": "softmax"}, {"class_agnostic_mask": True}])
def test_tiny_model_with_the_switch_trains_and_predicts_probabilities(settings):
    torch.manual_seed(0)
    cfg = tiny_config()
    for key, value in settings.items():
        setattr(cfg.roi_heads, key, value)
    cfg.rpn.post_nms_top_n_train = cfg.rpn.post_nms_top_n_test = 100
    cfg.roi_heads.batch_size_per_image, cfg.roi_heads.detections_per_image = 64, 5
    model = build_model(cfg).train()
    from maskrcnn.structures import Targets

    masks = torch.zeros(1, 80, 96, dtype=torch.uint8)
    masks[0, 12:44, 20:70] = 1
    targets = [Targets(torch.tensor([[18.0, 10.0, 72.0, 46.0]]), torch.tensor([2]), masks)]
    image = torch.rand(3, 80, 96)
    losses = model([image], targets)
    assert torch.isfinite(losses["loss_mask"]) and losses["loss_mask"] > 0
    losses["loss_mask"].backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0
    model.eval()
    (soft,) = model.predict([image], soft_masks=True)
    assert len(soft) > 0 and bool(((soft.masks >= 0) & (soft.masks <= 1)).all())
