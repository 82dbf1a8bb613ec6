import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.structures import Detections
from maskrcnn.visualize import (
    MASK_ALPHA,
    PALETTE,
    PR_PLOT_SIZE,
    draw_detections,
    draw_pr_plot,
    save_overlay,
)

H, W = 120, 160


def make_image() -> torch.Tensor:
    """[3, H, W] float in [0, 1], a smooth gradient (every pixel exactly representable)."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    img = torch.stack([xx / (W - 1), yy / (H - 1), torch.full((H, W), 0.25)])
    return (img * 255).round() / 255


def make_dets() -> Detections:
    """Two overlapping objects in the lower part of the image, one low-score object."""
    masks = torch.zeros(3, H, W, dtype=torch.bool)
    masks[0, 50:90, 20:70] = True
    masks[1, 70:110, 50:120] = True
    masks[2, 10:30, 130:150] = True
    return Detections(
        boxes=torch.tensor([[20.0, 50, 70, 90], [50, 70, 120, 110], [130, 10, 150, 30]]),
        scores=torch.tensor([0.95, 0.8, 0.2]),
        labels=torch.tensor([1, 3, 2]),
        masks=masks,
    )


def blended(orig: np.ndarray, color: np.ndarray) -> np.ndarray:
    return np.round((1 - MASK_ALPHA) * orig.astype(np.float32) + MASK_ALPHA * color)


def test_masks_blended_inside_and_nothing_far_outside():
    image, dets = make_image(), make_dets()
    orig = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # [H, W, 3]
    out = draw_detections(image, dets, class_names=["__bg__", "cat", "dog", "bird"])
    assert out.size == (W, H) and out.mode == "RGB"
    arr = np.asarray(out)
    # mask interiors (away from outlines, boxes and labels) are blended with their colour
    np.testing.assert_array_equal(arr[60:85, 25:45], blended(orig[60:85, 25:45], PALETTE[0]))
    np.testing.assert_array_equal(arr[95:105, 80:115], blended(orig[95:105, 80:115], PALETTE[1]))
    # overlap: the higher-scoring detection's colour wins
    np.testing.assert_array_equal(arr[75:85, 55:65], blended(orig[75:85, 55:65], PALETTE[0]))
    # unchanged away from the boxes (leaving room for the labels drawn above them)
    outside = np.ones((H, W), dtype=bool)
    outside[48:92, 18:72] = False
    outside[68:112, 48:122] = False
    outside[25:70, 18:160] = False  # label bands above the boxes
    np.testing.assert_array_equal(arr[outside], orig[outside])
    assert (arr[:20] == orig[:20]).all()  # low-score detection (0.2 < 0.5) not drawn


def test_boxes_outlines_and_labels_drawn():
    image, dets = make_image(), make_dets()
    arr = np.asarray(draw_detections(image, dets))
    orig = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert (arr[70, 75:120] == PALETTE[1]).all()  # top edge of box 1 (x <= 70: box 0 on top)
    assert (arr[50, 20:70] == PALETTE[0]).all()  # top edge of box 0
    label_band = arr[35:50, 20:70]  # label of det 0 above its box, filled with its colour
    assert (label_band == PALETTE[0]).all(axis=-1).mean() > 0.3
    assert (label_band != orig[35:50, 20:70]).any(axis=-1).mean() > 0.5


def test_mask_outline_opaque_inside_mask_only():
    image, dets = make_image(), make_dets()
    dets.boxes[0] = torch.tensor([10.0, 40, 80, 100])  # box well outside mask 0
    arr = np.asarray(draw_detections(image, dets))
    orig = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert (arr[50, 20:50] == PALETTE[0]).all()  # top row of mask 0: outline
    assert (arr[55:69, 20] == PALETTE[0]).all()  # left column of mask 0: outline
    np.testing.assert_array_equal(arr[51:69, 21], blended(orig[51:69, 21], PALETTE[0]))
    np.testing.assert_array_equal(arr[45:49, 20:50], orig[45:49, 20:50])  # box, not mask


def test_score_threshold_and_soft_masks():
    image, dets = make_image(), make_dets()
    dets.masks = dets.masks.float() * 0.7  # soft masks, above 0.5 inside
    out = np.asarray(draw_detections(image, dets, score_thresh=0.1))
    orig = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    # (its label sits inside the box top: no room above it)
    np.testing.assert_array_equal(out[26:29, 132:148], blended(orig[26:29, 132:148], PALETTE[2]))
    dets.masks = dets.masks * 0.5  # 0.35 < 0.5: no mask pixels at all
    out = np.asarray(draw_detections(image, dets, score_thresh=0.1))
    np.testing.assert_array_equal(out[60:85, 25:45], orig[60:85, 25:45])
    nothing = np.asarray(draw_detections(image, dets, score_thresh=0.99))
    np.testing.assert_array_equal(nothing, orig)


def test_input_types_agree():
    image, dets = make_image(), make_dets()
    ref = np.asarray(draw_detections(image, dets))
    hwc = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(draw_detections(hwc, dets)), ref)
    np.testing.assert_array_equal(np.asarray(draw_detections(Image.fromarray(hwc), dets)), ref)
    rgba = Image.fromarray(np.dstack([hwc, np.full((H, W), 255, np.uint8)]), "RGBA")
    np.testing.assert_array_equal(np.asarray(draw_detections(rgba, dets)), ref)
    gray = draw_detections(hwc[:, :, 0], dets)
    assert gray.size == (W, H)


def test_no_masks_and_no_detections():
    image, dets = make_image(), make_dets()
    dets.masks = None
    arr = np.asarray(draw_detections(image, dets))
    orig = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(arr[60:85, 25:45], orig[60:85, 25:45])  # box interior
    assert (arr[70, 75:120] == PALETTE[1]).all()
    np.testing.assert_array_equal(np.asarray(draw_detections(image, Detections.empty())), orig)


def test_mask_size_mismatch_raises():
    dets = make_dets()
    dets.masks = dets.masks[:, :60]
    with pytest.raises(ValueError, match="image size"):
        draw_detections(make_image(), dets)


def test_label_text_uses_names_when_known():
    from maskrcnn.visualize import _label_text

    assert _label_text(2, 0.934, ["bg", "cat", "dog"]) == "dog 0.93"
    assert _label_text(3, 0.5, ["bg", "cat", "dog"]) == "class 3 0.50"
    assert _label_text(1, 0.5, None) == "class 1 0.50"


def test_save_overlay(tmp_path):
    path = tmp_path / "vis" / "overlay.png"
    save_overlay(make_image(), make_dets(), path, class_names=["bg", "cat", "dog", "bird"])
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (W, H)


def test_pr_plot_draws_curves():
    recall = np.linspace(0, 1, 101)
    curves = {"a": 1 - recall**2, "b": np.where(recall < 0.5, 0.6, 0.0), "none": -np.ones(101)}
    img = draw_pr_plot(recall, curves, title="test")
    assert img.size == PR_PLOT_SIZE
    arr = np.asarray(img).astype(int)
    # curve "a" at recall 0 has precision 1: the top-left corner of the plot area is coloured
    colours = (np.abs(arr - arr.mean(axis=2, keepdims=True)).sum(axis=2) > 60).sum()
    assert colours > 800
    blank = np.asarray(draw_pr_plot(recall, {}, title="test")).astype(int)
    blank_colours = (np.abs(blank - blank.mean(axis=2, keepdims=True)).sum(axis=2) > 60).sum()
    assert blank_colours == 0
