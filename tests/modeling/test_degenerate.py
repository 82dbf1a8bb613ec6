"""Degenerate inputs: no objects, no proposals, no detections."""

import torch

from maskrcnn.modeling import build_model
from maskrcnn.structures import Targets
from tests.conftest import tiny_config


def _empty_targets(height: int, width: int) -> Targets:
    return Targets(
        torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64),
        torch.zeros((0, height, width), dtype=torch.uint8),
    )


def test_image_without_objects_gives_finite_losses(tiny_model):
    images = [torch.rand(3, 80, 96), torch.rand(3, 64, 64)]
    targets = [_empty_targets(80, 96), _empty_targets(64, 64)]
    tiny_model.train()
    losses = tiny_model(images, targets)
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box", "loss_cls", "loss_box",
                           "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box"] == 0 and losses["loss_box"] == 0 and losses["loss_mask"] == 0
    sum(losses.values()).backward()  # and gradients flow


def test_mixed_batch_with_and_without_objects(tiny_model):
    masks = torch.zeros(1, 80, 96, dtype=torch.uint8)
    masks[0, 10:50, 20:70] = 1
    targets = [
        Targets(torch.tensor([[20.0, 10.0, 70.0, 50.0]]), torch.tensor([2]), masks),
        _empty_targets(64, 64),
    ]
    tiny_model.train()
    losses = tiny_model([torch.rand(3, 80, 96), torch.rand(3, 64, 64)], targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] > 0


def test_an_image_without_masks_keeps_the_others_mask_loss(tiny_model):
    masks = torch.zeros(1, 80, 96, dtype=torch.uint8)
    masks[0, 10:50, 20:70] = 1
    box, label = torch.tensor([[20.0, 10.0, 70.0, 50.0]]), torch.tensor([2])
    images = [torch.rand(3, 80, 96), torch.rand(3, 80, 96)]
    tiny_model.train()

    def mask_loss(second_masks):
        torch.manual_seed(0)
        targets = [Targets(box, label, masks), Targets(box, label, second_masks)]
        return tiny_model(images, targets).get("loss_mask")

    both, first_only = mask_loss(masks), mask_loss(None)
    assert first_only is not None and torch.isfinite(first_only) and first_only > 0
    assert not torch.equal(both, first_only)  # the second image's RoIs left out
    torch.manual_seed(0)
    box_only = tiny_model(images, [Targets(box, label, None), Targets(box, label, None)])
    assert "loss_mask" not in box_only


def test_validation_loss_in_eval_mode(tiny_model):
    tiny_model.eval()
    losses = tiny_model.compute_losses([torch.rand(3, 64, 64)], [_empty_targets(64, 64)])
    assert all(torch.isfinite(v) for v in losses.values())
    assert not tiny_model.training


def test_no_detections_are_well_formed():
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.roi_heads.score_thresh = 1.0  # nothing can pass
    model = build_model(cfg).eval()
    (dets,) = model([torch.rand(3, 70, 90)])
    assert len(dets) == 0
    assert dets.boxes.shape == (0, 4) and dets.scores.shape == (0,)
    assert dets.labels.dtype == torch.int64
    assert dets.masks.shape == (0, 70, 90) and dets.masks.dtype == torch.bool


def test_no_proposals_are_well_formed():
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.rpn.score_thresh = 1.1  # the RPN keeps nothing
    model = build_model(cfg).eval()
    (dets,) = model([torch.rand(3, 70, 90)])
    assert len(dets) == 0 and dets.masks.shape == (0, 70, 90)


def test_detections_in_original_pixels():
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    image = torch.rand(3, 150, 300)  # resized to 96 x 160 inside (max_size 160)
    (dets,) = model([image])
    assert len(dets) > 0
    assert dets.masks.shape[-2:] == (150, 300)
    assert dets.boxes[:, 2].max() <= 300 and dets.boxes[:, 3].max() <= 150
    assert dets.boxes[:, 2].max() > 160  # not left in network-input pixels
