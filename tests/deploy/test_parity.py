"""Exported models on ONNX Runtime and OpenVINO against the eager model: batches of
different sizes, images without detections, the torchvision, detectron2 (aligned RoIAlign,
BGR 0-255, adaptive sampling) and small (GroupNorm) presets, both mask outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn.deploy import load_exported
from maskrcnn.testing import smooth_random_images

from .conftest import CLASS_NAMES, assert_same_detections

SIZES = [(150, 200), (97, 131), (180, 120)]
BACKENDS = ["onnxruntime", "openvino"]


def _load(exports, name, backend, mask_output="pasted"):
    model, onnx_path, xml_path = exports.get(name, mask_output)
    return model, load_exported(onnx_path if backend == "onnxruntime" else xml_path)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["torchvision_r50_fpn", "detectron2_r50_fpn", "small"])
def test_batch_of_different_sizes(exports, name, backend):
    model, exported = _load(exports, name, backend)
    images = smooth_random_images(SIZES, seed=3)
    expected = model.predict(images)
    assert all(len(d) > 10 for d in expected)  # the test means something
    soft = model.predict(images, soft_masks=True)
    for want, got, probs in zip(expected, exported.predict(images), soft):
        assert_same_detections(want, got, soft=probs)
    # one image alone, a size the batch did not have
    single = smooth_random_images([(77, 190)], seed=4)
    assert_same_detections(model.predict(single)[0], exported.predict(single)[0],
                           soft=model.predict(single, soft_masks=True)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_images_without_detections(exports, backend):
    model, exported = _load(exports, "torchvision_r50_fpn", backend)
    images = smooth_random_images(SIZES, seed=5)
    best = [float(d.scores.max()) for d in model.predict(images)]
    # a threshold that leaves the image with the weakest best score without detections
    thresh = (sorted(best)[0] + sorted(best)[1]) / 2
    expected = model.predict(images, score_thresh=thresh)
    got = exported.predict(images, score_thresh=thresh)
    soft = model.predict(images, score_thresh=thresh, soft_masks=True)
    assert sorted(len(d) == 0 for d in expected) == [False, False, True]
    for want, have, probs in zip(expected, got, soft):
        assert_same_detections(want, have, soft=probs)
    nothing = exported.predict(images, score_thresh=1.0)  # no image has any
    for det, (height, width) in zip(nothing, SIZES):
        assert det.boxes.shape == (0, 4) and det.masks.shape == (0, height, width)


@pytest.mark.parametrize("backend", BACKENDS)
def test_probabilities_output_is_pasted_by_the_predictor(exports, backend):
    model, exported = _load(exports, "small", backend, mask_output="probs")
    images = smooth_random_images(SIZES[:2], seed=6)
    for soft in (False, True):
        for want, got in zip(model.predict(images, soft_masks=soft),
                             exported.predict(images, soft_masks=soft)):
            assert_same_detections(want, got)


def test_pasted_file_refuses_soft_masks(exports):
    _, exported = _load(exports, "small", "onnxruntime")
    with pytest.raises(ValueError, match="mask-output probs"):
        exported.predict(smooth_random_images([(64, 64)]), soft_masks=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_metadata_travels_with_the_file(exports, backend):
    model, exported = _load(exports, "detectron2_r50_fpn", backend)
    assert exported.backend == backend
    assert exported.class_names == CLASS_NAMES
    assert exported.cfg == model.cfg  # the whole config: thresholds, input, category ids
    assert exported.info.preset == "custom"  # a preset's settings on a smaller network
    assert exported.info.mask_output == "pasted"


def test_raw_graph_contract(exports):
    """The documented inputs and outputs, used without our predictor."""
    import onnxruntime as ort

    _, onnx_path, _ = exports.get("small")
    session = ort.InferenceSession(str(onnx_path))
    assert [i.name for i in session.get_inputs()] == [
        "images", "image_sizes", "score_threshold", "mask_threshold"]
    assert [o.name for o in session.get_outputs()] == [
        "boxes", "scores", "labels", "batch_index", "masks"]
    images = np.zeros((2, 3, 70, 90), np.float32)
    images[0, :, :50, :90] = 0.5
    feeds = {"images": images, "image_sizes": np.array([[50, 90], [70, 40]], np.int64),
             "score_threshold": np.array(0.0, np.float32),
             "mask_threshold": np.array(0.5, np.float32)}
    boxes, scores, labels, batch_index, masks = session.run(None, feeds)
    assert masks.dtype == np.bool_ and masks.shape == (len(boxes), 70, 90)
    assert labels.min() >= 1 and labels.max() < len(CLASS_NAMES)
    assert np.all(np.diff(batch_index) >= 0)  # grouped by image
    first = batch_index == 0
    assert np.all(np.diff(scores[first]) <= 0)  # best first
    assert not masks[first][:, 50:, :].any()  # nothing outside the image's own size
    assert not masks[~first][:, :, 40:].any()
    assert boxes[first][:, 3].max() <= 50 and boxes[~first][:, 2].max() <= 40


def test_threshold_is_a_call_argument(exports):
    model, exported = _load(exports, "small", "onnxruntime")
    images = smooth_random_images(SIZES[:1], seed=7)
    low = exported.predict(images, score_thresh=0.05)[0]
    high = exported.predict(images, score_thresh=0.6)[0]
    assert len(high) < len(low) and bool((high.scores > 0.6).all())
    assert exported.cfg.roi_heads.score_thresh == 0.05  # nothing changed on the model
    assert_same_detections(model.predict(images, score_thresh=0.6)[0], high,
                           soft=model.predict(images, score_thresh=0.6, soft_masks=True)[0])


def test_max_roi_align_is_refused():
    from maskrcnn.deploy.exporter import ExportError, build_onnx

    from .conftest import deploy_model

    model = deploy_model("small")
    model.roi_heads.box_pooler.reduction = "max"
    with pytest.raises(ExportError, match="max RoIAlign"):
        build_onnx(model)


def test_export_leaves_the_model_alone(exports):
    model, _, _ = exports.get("torchvision_r50_fpn")
    assert not model.inference_optimized
    assert any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    assert next(model.parameters()).dtype == torch.float32


def test_preset_names():
    from maskrcnn.config import PRESETS, preset, preset_name

    for name in PRESETS:
        cfg = preset(name)
        cfg.roi_heads.num_classes = 7  # the classes do not change the preset
        cfg.class_names = tuple("abcdefg")
        assert preset_name(cfg) == name
    cfg.backbone.depth = 50
    assert preset_name(cfg) == "custom"
    assert preset_name(preset("r50_fpn")) == "paper_r50_fpn"  # the earlier name still reads
