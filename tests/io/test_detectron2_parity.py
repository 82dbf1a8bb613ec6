"""Parity with detectron2 itself: a seeded mask_rcnn_R_50_FPN (stride in the 1x1 convs, BGR
0-255 input) in detectron2's file format, loaded here, against the outputs detectron2
computed for it (tests/fixtures/detectron2/, written by benchmarks/detectron2_fixture.py).

The input is already at the test size (scale 1), so resizing (detectron2 resizes uint8
images with PIL, outside its model) plays no part.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from torchvision.ops import box_iou

from maskrcnn.io.weights import load_model

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "detectron2"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "detectron2_fixture", ROOT / "benchmarks" / "detectron2_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    gen = _generator()
    meta = json.loads((FIXTURE / "meta.json").read_text())
    weights = gen.detectron2_weights(meta["seed"])
    checksum = gen._checksum(weights)
    assert checksum == pytest.approx(meta["weights_checksum"], rel=1e-9), (
        "numpy draws other weights than when the fixture was written")
    path = tmp_path_factory.mktemp("d2") / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
    model = load_model(path)
    model.cfg.input.min_size_test = meta["config"]["INPUT.MIN_SIZE_TEST"]
    model.cfg.input.max_size = meta["config"]["INPUT.MAX_SIZE_TEST"]
    image = torch.from_numpy(gen.synthetic_image(meta["seed"])).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        image_list, _ = model.transform([image], None, training=False)
        features = model._features(image_list.tensors)
        logits, deltas, anchors = model.rpn(features, image_list.tensors.shape[-2:])
        proposals = model.rpn.inference(logits, deltas, anchors, image_list.image_sizes,
                                        training=False)
        detections = model.roi_heads.inference(features[:4], proposals,
                                               image_list.image_sizes)
        pasted = model.predict([image])[0]
    expected = dict(np.load(FIXTURE / "outputs.npz"))
    return model, image_list, proposals[0], detections[0], pasted, expected


def test_model_is_the_fixtures(run):
    model, image_list, *_ = run
    assert model.cfg.backbone.depth == 50 and model.cfg.backbone.stride_in_1x1
    assert tuple(model.backbone.body.layer2[0].conv1.stride) == (2, 2)
    assert image_list.image_sizes == [(250, 330)]  # not resized


def test_proposals_match_detectron2(run):
    _, _, proposals, _, _, expected = run
    theirs = torch.from_numpy(expected["proposals"])
    assert proposals.shape == theirs.shape
    # the same boxes; the order may swap within float32 ties (detectron2 runs NMS on logits,
    # we on sigmoid probabilities, which tie where logits differ by less than an ulp)
    iou = box_iou(proposals, theirs)
    assert (iou.max(1).values > 0.9999).all() and (iou.max(0).values > 0.9999).all()
    in_order = (proposals - theirs).abs().amax(1) < 1e-3
    assert in_order.float().mean() > 0.99


def test_detections_match_detectron2(run):
    _, _, _, det, _, expected = run
    assert det.boxes.shape[0] == expected["boxes"].shape[0] > 10
    # detectron2's class k is our label k + 1 (background last there, first here)
    assert torch.equal(det.labels - 1, torch.from_numpy(expected["classes"]))
    assert_close(det.scores, torch.from_numpy(expected["scores"]), rtol=0, atol=1e-5)
    assert_close(det.boxes, torch.from_numpy(expected["boxes"]), rtol=0, atol=1e-3)
    assert_close(det.masks, torch.from_numpy(expected["mask_probs"]), rtol=0, atol=1e-4)


def test_pasted_masks_equal_detectron2s(run):
    """A detectron2 file pastes as detectron2 does (roi_heads.mask_paste: detectron2,
    grid_sample over the float box, prob >= 0.5): measured, every pixel of all 100 masks
    equal (torchvision's pasting: 13144 pixels differ, mean IoU 0.943, min 0.873)."""
    model, *_, pasted, expected = run
    assert model.cfg.roi_heads.mask_paste == "detectron2"
    width = pasted.masks.shape[-1]
    theirs = np.unpackbits(expected["pasted_masks"], axis=-1)[..., :width].astype(bool)
    theirs = torch.from_numpy(theirs)
    assert pasted.masks.shape == theirs.shape and theirs.any(2).any(1).all()
    assert_close(pasted.boxes, torch.from_numpy(expected["pasted_boxes"]), rtol=0, atol=1e-3)
    assert torch.equal(pasted.masks, theirs)
