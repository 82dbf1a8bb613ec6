"""Small exported models shared by the deploy tests (each export takes a few seconds)."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.config import preset
from maskrcnn.modeling import build_model
from maskrcnn.structures import Detections
from maskrcnn.testing import spread_scores

CLASS_NAMES = ("background", "disc", "square", "star")
CATEGORY_IDS = (0, 3, 5, 9)


def deploy_config(name: str, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS):
    """A preset's settings on a small network and small images."""
    cfg = preset(name)
    if name != "small":
        cfg.backbone.depth = 18
        cfg.backbone.fpn_channels = 64
        cfg.roi_heads.representation_size = 256
        cfg.roi_heads.mask_head_channels = 64
    cfg.input.min_size_test = 128
    cfg.input.max_size = 192
    # the graph's own pasting is torchvision's: tested here on every preset (a model that
    # pastes as detectron2 exports its probabilities: test_mask_paste_export.py)
    cfg.roi_heads.mask_paste = "torchvision"
    cfg.roi_heads.num_classes = len(class_names)
    cfg.class_names = tuple(class_names)
    cfg.category_ids = tuple(category_ids)
    return cfg


def deploy_model(name: str, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS):
    torch.manual_seed(0)
    model = build_model(deploy_config(name, class_names, category_ids)).eval()
    scale = model.cfg.input.pixel_scale / max(model.cfg.input.pixel_std)
    if scale != 1.0:  # 0-255 inputs (detectron2): a stem that expects them, as trained ones
        with torch.no_grad():  # do, so that features and scores do not saturate into ties
            model.backbone.body.conv1.weight.div_(scale * 4)
    return spread_scores(model)


class ExportCache:
    """One model and its exported files per (preset, mask output), made on first use."""

    def __init__(self, folder):
        self.folder = folder
        self.entries = {}

    def get(self, name: str, mask_output: str = "pasted"):
        import onnx

        from maskrcnn.deploy.exporter import export, save_openvino

        key = (name, mask_output)
        if key not in self.entries:
            model = deploy_model(name)
            stem = self.folder / f"{name}_{mask_output}"
            onnx_path = export(model, stem.with_suffix(".onnx"), "onnx",
                               mask_output=mask_output)[0]
            xml_path = save_openvino(onnx.load(str(onnx_path)), stem.with_suffix(".xml"))[0]
            self.entries[key] = (model, onnx_path, xml_path)
        return self.entries[key]


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    return ExportCache(tmp_path_factory.mktemp("exports"))


def assert_same_detections(expected: Detections, got: Detections, box_tol: float = 0.01,
                           score_tol: float = 1e-3, min_mask_iou: float = 0.98,
                           soft: Detections | None = None, threshold: float = 0.5) -> None:
    """Same detections after matching (same label, box IoU > 0.99), boxes within box_tol
    pixels, scores within score_tol, masks of IoU above min_mask_iou. With `soft` (the
    expected detections with soft masks), pixels whose probability is within 1e-4 of the
    threshold may differ (rounding of 1e-6 flips them) and no other pixel may."""
    from maskrcnn.ops.boxes import box_iou

    assert len(got) == len(expected), (len(got), len(expected))
    assert got.boxes.shape == (len(got), 4) and got.boxes.dtype == torch.float32
    assert got.labels.dtype == torch.int64 and got.scores.shape == (len(got),)
    assert got.masks.shape == expected.masks.shape and got.masks.dtype == expected.masks.dtype
    if len(expected) == 0:
        return
    same_label = expected.labels[:, None] == got.labels[None, :]
    iou = torch.where(same_label, box_iou(expected.boxes, got.boxes), torch.zeros(()))
    best, match = iou.max(dim=1)
    assert (best > 0.99).all(), f"{int((best <= 0.99).sum())} detections without a twin"
    assert len(set(match.tolist())) == len(match), "two detections matched the same twin"
    torch.testing.assert_close(got.boxes[match], expected.boxes, atol=box_tol, rtol=0)
    torch.testing.assert_close(got.scores[match], expected.scores, atol=score_tol, rtol=0)
    theirs, ours = got.masks[match], expected.masks
    if ours.dtype != torch.bool:
        torch.testing.assert_close(theirs, ours, atol=2e-3, rtol=0)
        return
    if soft is not None:
        near_threshold = (soft.masks - threshold).abs() < 1e-4
        assert not ((theirs ^ ours) & ~near_threshold).any(), "mask pixels differ"
        theirs, ours = theirs | near_threshold, ours | near_threshold
    inter = (ours & theirs).flatten(1).sum(1).float()
    union = (ours | theirs).flatten(1).sum(1).float()
    mask_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones(()))
    assert mask_iou.min() > min_mask_iou, f"mask IoU {float(mask_iou.min()):.3f}"
