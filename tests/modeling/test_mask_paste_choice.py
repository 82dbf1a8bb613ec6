"""roi_heads.mask_paste: torchvision's pasting (default) or detectron2's, checked when the
model is built, read at each predict."""

import pytest
import torch

from maskrcnn.config import config_from_dict, config_to_dict, preset
from maskrcnn.modeling import build_model
from maskrcnn.ops.mask_paste_grid import paste_masks_as
from maskrcnn.testing import smooth_random_images, spread_scores
from tests.conftest import tiny_config


def test_defaults_and_presets():
    assert preset("torchvision_r50_fpn").roi_heads.mask_paste == "torchvision"
    assert preset("paper_r50_fpn").roi_heads.mask_paste == "torchvision"
    assert preset("detectron2_r50_fpn").roi_heads.mask_paste == "detectron2"
    cfg = config_from_dict({"roi_heads": {"mask_paste": "detectron2"}})
    assert config_to_dict(cfg)["roi_heads"]["mask_paste"] == "detectron2"


def test_unknown_value_is_refused_when_the_model_is_built():
    cfg = tiny_config()
    cfg.roi_heads.mask_paste = "detectron"
    with pytest.raises(ValueError) as err:
        build_model(cfg)
    message = str(err.value)
    assert "roi_heads.mask_paste 'detectron'" in message
    assert "torchvision" in message and "detectron2" in message


def test_predict_pastes_as_the_config_says():
    torch.manual_seed(0)
    model = spread_scores(build_model(tiny_config()).eval())
    images = smooth_random_images([(90, 120)], seed=2)
    torchvision_masks = model.predict(images)[0].masks
    model.cfg.roi_heads.mask_paste = "detectron2"  # read at each call
    soft = model.predict(images, soft_masks=True)[0]
    binary = model.predict(images)[0]
    assert len(binary) > 5 and binary.masks.dtype == torch.bool
    assert torch.equal(binary.masks, soft.masks >= model.cfg.roi_heads.mask_threshold)
    assert not torch.equal(binary.masks, torchvision_masks)
    # the same probabilities pasted by the op
    detections = _mask_probabilities(model, images)
    assert torch.equal(soft.masks, paste_masks_as("detectron2", detections.masks,
                                                  soft.boxes, (90, 120)))


def _mask_probabilities(model, images):
    """The [D, M, M] mask probabilities predict pastes (its steps, without the pasting)."""
    with torch.no_grad():
        image_list, _ = model.transform(images, None, training=False)
        features = model._features(image_list.tensors)
        logits, deltas, anchors = model.rpn(features, image_list.tensors.shape[-2:])
        proposals = model.rpn.inference(logits, deltas, anchors, image_list.image_sizes,
                                        training=False)
        return model.roi_heads.inference(features[: model.num_roi_levels], proposals,
                                         image_list.image_sizes)[0]
