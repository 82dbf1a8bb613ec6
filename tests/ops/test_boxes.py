import pytest
import torch
import torchvision

from maskrcnn.ops.boxes import (
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    nms,
    remove_small_boxes,
)


def random_boxes(n: int, gen: torch.Generator, dtype=torch.float32, scale: float = 100.0):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * scale / 2
    wh[::7] = 0  # some degenerate (zero width and height) boxes
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_and_area_match_torchvision(dtype):
    gen = torch.Generator().manual_seed(0)
    boxes1, boxes2 = random_boxes(40, gen, dtype), random_boxes(30, gen, dtype)
    boxes2[:5] = boxes1[:5]  # identical pairs: IoU 1 (or NaN for empty boxes)
    ours = box_iou(boxes1, boxes2)
    assert ours.shape == (40, 30)
    torch.testing.assert_close(ours, torchvision.ops.box_iou(boxes1, boxes2), rtol=0, atol=0,
                               equal_nan=True)
    torch.testing.assert_close(box_area(boxes1), torchvision.ops.box_area(boxes1), rtol=0, atol=0)
    assert ours[1, 1] == 1.0


def test_box_iou_hand_values_and_empty():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 5.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 0.0, 0.5]]))
    assert box_iou(a, torch.zeros(0, 4)).shape == (1, 0)
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 3)


def test_clip_boxes_matches_torchvision():
    gen = torch.Generator().manual_seed(1)
    boxes = torch.rand(50, 4, generator=gen) * 300 - 100  # many outside [0, w] x [0, h]
    size = (120, 80)  # (h, w)
    ref = torchvision.ops.clip_boxes_to_image(boxes, size)
    torch.testing.assert_close(clip_boxes(boxes, size), ref, rtol=0, atol=0)
    batched = boxes.reshape(10, 5, 4)  # [N, K, 4] as decoded per class
    torch.testing.assert_close(clip_boxes(batched, size), ref.reshape(10, 5, 4), rtol=0, atol=0)
    clipped = clip_boxes(boxes, size)
    assert clipped[:, 0::2].min() >= 0 and clipped[:, 0::2].max() <= 80
    assert clipped[:, 1::2].min() >= 0 and clipped[:, 1::2].max() <= 120


def test_remove_small_boxes_matches_torchvision():
    gen = torch.Generator().manual_seed(2)
    boxes = random_boxes(60, gen, scale=10.0)
    for min_size in (0.0, 1e-3, 1.0, 2.5):
        keep = remove_small_boxes(boxes, min_size)
        assert keep.dtype == torch.int64
        assert torch.equal(keep, torchvision.ops.remove_small_boxes(boxes, min_size))
    exact = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.9, 3.0], [0.0, 0.0, 3.0, 2.0]])
    assert remove_small_boxes(exact, 2.0).tolist() == [0, 2]  # >= min_size is kept


@pytest.mark.parametrize("n", [200, 1500])  # torchvision's two routes: > 1000 boxes per class
def test_batched_nms_matches_torchvision_and_accepts_empty(n):
    gen = torch.Generator().manual_seed(3)
    boxes = random_boxes(n, gen)
    boxes[:, 2:] += 1  # no empty boxes
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(0, 4, (n,), generator=gen)
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_batched_nms_is_per_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 1.0, 10.0, 11.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.5).tolist() == [0]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]


def test_inference_does_not_import_torchvision(tmp_path):
    """NMS loads torchvision's compiled library alone, and the ResNet blocks are ours: the
    ~160 MiB of torchvision's Python package stay out of a predicting process. (In a
    subprocess: the test process has torchvision imported, whose Python registrations,
    e.g. nms under autocast, would hide what is missing without them.)"""
    import subprocess
    import sys

    code = """
import sys, torch
from maskrcnn.api import create_model, predict
model = create_model("small").eval()
predict(model, torch.rand(3, 96, 128), score_thresh=0.0)
model.optimize_for_inference()
predict(model, torch.rand(3, 96, 128), score_thresh=0.0)
from maskrcnn.ops import batched_nms  # bf16 scores, float32 boxes under autocast (bf16 mode)
boxes = torch.rand(1500, 4) * 50
boxes[:, 2:] += boxes[:, :2] + 1
with torch.autocast("cpu", dtype=torch.bfloat16):
    for n in (100, 1500):  # both of torchvision's routes
        batched_nms(boxes[:n], torch.rand(n).bfloat16(), torch.randint(0, 3, (n,)), 0.5)
print("torchvision" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    assert out.strip().splitlines()[-1] == "False"
