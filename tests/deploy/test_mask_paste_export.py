"""roi_heads.mask_paste: detectron2 and export. The graph pastes as torchvision does, so a
detectron2-pasting model exports with probabilities only; the predictor pastes those as the
model's config (in the file's metadata) says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn.ops.mask_paste import paste_masks_thresholded
from maskrcnn.ops.mask_paste_grid import paste_masks_grid_sample
from maskrcnn.testing import smooth_random_images

from .conftest import assert_same_detections, deploy_model


def _detectron2_model():
    model = deploy_model("detectron2_r50_fpn")
    model.cfg.roi_heads.mask_paste = "detectron2"
    return model


def test_pasted_export_is_refused_in_one_line_and_probs_are_the_default():
    pytest.importorskip("onnx")
    from maskrcnn.deploy.exporter import ExportError, build_onnx, check_exportable

    model = _detectron2_model()
    with pytest.raises(ExportError) as err:
        build_onnx(model, mask_output="pasted")
    message = str(err.value)
    assert "\n" not in message
    assert "roi_heads.mask_paste detectron2" in message and "--mask-output probs" in message
    check_exportable(model, 18, mask_output="probs")
    outputs = {o.name: o for o in build_onnx(model).graph.output}  # no mask_output given
    masks = outputs["masks"].type.tensor_type
    assert masks.elem_type == 1 and len(masks.shape.dim) == 3  # float [N, 28, 28]


def test_probabilities_are_pasted_as_the_model_pastes(tmp_path):
    pytest.importorskip("onnxruntime")
    from maskrcnn.deploy import load_exported
    from maskrcnn.deploy.exporter import export

    model = _detectron2_model()
    path = export(model, tmp_path / "d2.onnx", "onnx", mask_output="probs")[0]
    exported = load_exported(path, "onnxruntime")
    assert exported.cfg.roi_heads.mask_paste == "detectron2"
    images = smooth_random_images([(150, 200)], seed=6)
    for soft in (False, True):
        want = model.predict(images, soft_masks=soft)[0]
        got = exported.predict(images, soft_masks=soft)[0]
        assert len(want) > 10  # the test means something
        assert_same_detections(want, got)

    # the file's own probabilities and boxes, pasted with either rule
    outputs = _raw_outputs(exported, images)
    probs, boxes = torch.from_numpy(outputs["masks"]), torch.from_numpy(outputs["boxes"])
    got = exported.predict(images)[0]
    assert torch.equal(got.masks, paste_masks_grid_sample(probs, boxes, (150, 200), 0.5))
    assert not torch.equal(got.masks, paste_masks_thresholded(probs, boxes, (150, 200), 0.5))


def _raw_outputs(exported, images):
    """The graph's outputs for one image (probabilities [N, M, M], boxes [N, 4])."""
    from maskrcnn.deploy.runtime import _pad_batch

    batch, sizes = _pad_batch(images)
    threshold = np.array(exported.cfg.roi_heads.score_thresh, np.float32)
    return exported._run({"images": batch, "image_sizes": sizes, "score_threshold": threshold})
