import json
import os

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from maskrcnn.io.coco_results import (
    ENCODE_CHUNK,
    detections_to_coco,
    encode_masks,
    load_results_json,
    write_results_json,
)
from maskrcnn.structures import Detections

# pycocotools' mask.decode warns under NumPy 2 (its own Cython array); not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def random_detections(num: int, height: int = 37, width: int = 53, seed: int = 0) -> Detections:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * torch.tensor([width / 2, height / 2])
    wh = 1 + torch.rand(num, 2, generator=g) * torch.tensor([width / 2, height / 2])
    boxes = torch.cat([xy, xy + wh], dim=1)  # [D, 4] xyxy
    masks = torch.rand(num, height, width, generator=g) > 0.6
    return Detections(
        boxes=boxes,
        scores=torch.rand(num, generator=g),
        labels=torch.randint(1, 4, (num,), generator=g),
        masks=masks,
    )


def test_round_trip_masks_boxes_scores():
    dets = random_detections(6)
    results = detections_to_coco(dets, image_id=42)
    assert len(results) == 6
    json.dumps(results)  # plain Python types only
    for i, res in enumerate(results):
        assert res["image_id"] == 42 and isinstance(res["image_id"], int)
        assert res["category_id"] == int(dets.labels[i])
        assert isinstance(res["segmentation"]["counts"], str)
        assert res["segmentation"]["size"] == [37, 53]
        decoded = mask_utils.decode(res["segmentation"])  # [H, W] uint8
        np.testing.assert_array_equal(decoded.astype(bool), dets.masks[i].numpy())
        x1, y1, x2, y2 = dets.boxes[i].double().tolist()
        np.testing.assert_allclose(res["bbox"], [x1, y1, x2 - x1, y2 - y1], rtol=0, atol=1e-9)
        assert res["score"] == pytest.approx(float(dets.scores[i]), abs=0)
        assert "file_name" not in res


def test_bbox_xywh_by_hand():
    dets = Detections(
        boxes=torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.5, 0.25, 3.5, 4.0]]),
        scores=torch.tensor([0.9, 0.1]),
        labels=torch.tensor([1, 2]),
    )
    results = detections_to_coco(dets, 7, file_name="a.png")
    assert [r["bbox"] for r in results] == [[1.0, 2.0, 10.0, 20.0], [0.5, 0.25, 3.0, 3.75]]
    assert all("segmentation" not in r for r in results)  # masks None
    assert [r["file_name"] for r in results] == ["a.png", "a.png"]


@pytest.mark.parametrize("n", [5, 2 * ENCODE_CHUNK + 3])  # one call, and several chunks
def test_vectorised_encoding_equals_per_mask_encoding(n):
    dets = random_detections(n, seed=3)
    rles = encode_masks(dets.masks)
    assert len(rles) == n
    for rle, m in zip(rles, dets.masks.numpy()):
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle["counts"] == ref["counts"].decode("ascii")
        assert rle["size"] == ref["size"]


def test_soft_masks_thresholded_at_half():
    soft = torch.tensor([[[0.2, 0.5, 0.7], [0.49, 0.51, 1.0]]], dtype=torch.float64)  # [1,2,3]
    dets = Detections(
        boxes=torch.tensor([[0.0, 0.0, 3.0, 2.0]]), scores=torch.tensor([0.5]),
        labels=torch.tensor([1]), masks=soft,
    )
    (res,) = detections_to_coco(dets, 1)
    # 0.5 itself is background: the rule of the model's own pasting (> threshold)
    expected = np.array([[0, 0, 1], [0, 1, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(mask_utils.decode(res["segmentation"]), expected)
    # numpy float input goes the same way
    assert encode_masks(soft.numpy())[0]["counts"] == res["segmentation"]["counts"]


@pytest.mark.parametrize(
    "mapping",
    [[0, 1, 3, 7], (0, 1, 3, 7), {1: 1, 2: 3, 3: 7}],
    ids=["list", "tuple", "dict"],
)
def test_category_mapping(mapping):
    dets = random_detections(8, seed=1)
    results = detections_to_coco(dets, 3, label_to_category_id=mapping)
    expected = {1: 1, 2: 3, 3: 7}
    assert [r["category_id"] for r in results] == [expected[int(v)] for v in dets.labels]


def test_category_mapping_unknown_label_raises():
    dets = random_detections(3, seed=2)
    dets.labels[:] = 5
    with pytest.raises(KeyError, match="5"):
        detections_to_coco(dets, 1, label_to_category_id=[0, 1, 2])
    with pytest.raises(KeyError, match="5"):
        detections_to_coco(dets, 1, label_to_category_id={1: 1})


def test_empty_detections():
    assert detections_to_coco(Detections.empty(), 1) == []
    empty = Detections.empty()
    empty.masks = torch.zeros(0, 4, 5, dtype=torch.bool)
    assert detections_to_coco(empty, 1) == []


def test_mask_count_mismatch_raises():
    dets = random_detections(3)
    dets.masks = dets.masks[:2]
    with pytest.raises(ValueError, match="2 masks for 3"):
        detections_to_coco(dets, 1)


def test_write_and_load_round_trip(tmp_path):
    results = detections_to_coco(random_detections(4), 9, [0, 5, 6, 7])
    path = tmp_path / "sub" / "results.json"
    write_results_json(results, path)
    assert load_results_json(path) == results
    # overwrite, and no temporary file is left behind
    write_results_json(results[:1], path)
    assert load_results_json(str(path)) == results[:1]
    assert os.listdir(path.parent) == ["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "results.json"
    write_results_json([], path)
    with pytest.raises(TypeError):
        write_results_json([{"image_id": object()}], path)
    assert load_results_json(path) == []
    assert os.listdir(tmp_path) == ["results.json"]


GOOD = {"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}


@pytest.mark.parametrize(
    "content, message",
    [
        ({"annotations": []}, "not a COCO results list"),
        ([{**GOOD, "score": None}], "score"),
        ([{k: v for k, v in GOOD.items() if k != "image_id"}], "image_id"),
        ([{k: v for k, v in GOOD.items() if k != "category_id"}], "category_id"),
        ([{k: v for k, v in GOOD.items() if k != "score"}], "score"),
        ([GOOD, {**GOOD, "category_id": "2"}], "entry 1 'category_id'"),
        ([{**GOOD, "image_id": True}], "image_id"),
        ([{**GOOD, "bbox": [1, 2, 3]}], "bbox"),
        ([{k: v for k, v in GOOD.items() if k != "bbox"}], "neither"),
        ([GOOD, 3], "entry 1"),
    ],
)
def test_load_rejects_non_results(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as info:
        load_results_json(path)
    assert str(path) in str(info.value)


def test_load_rejects_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{")
    with pytest.raises(ValueError, match="broken.json"):
        load_results_json(path)
