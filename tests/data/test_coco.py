"""CocoDataset: structure errors, skipped annotations, masks vs pycocotools, categories."""

from __future__ import annotations

import contextlib
import copy
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrcnn.data.coco import CocoDataset, DatasetError, ImageError
from maskrcnn.data.coco_records import rle_string_counts

# pycocotools' decode trips numpy 2's __array__ copy deprecation on every call: not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")



def _ann(ann_id, image_id=1, category_id=1, bbox=(2, 3, 5, 4), **extra):
    """Annotation with a rectangular polygon matching its bbox (overridable)."""
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
           "iscrowd": 0}
    if bbox is not None:
        x, y, w, h = bbox
        ann["bbox"] = list(bbox)
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    ann.update(extra)
    return ann


def _coco(images=((1, 20, 30),), annotations=(), categories=((1, "thing"),)):
    return {
        "images": [{"id": i, "file_name": f"img{i}.png", "height": h, "width": w}
                   for i, h, w in images],
        "annotations": [copy.deepcopy(a) for a in annotations],
        "categories": [{"id": c, "name": n} for c, n in categories],
    }


def _write(tmp_path, data, make_images=True):
    """Write ann.json (dict as JSON, str verbatim) and random PNGs for its images."""
    images_dir = tmp_path / "images"
    images_dir.mkdir(exist_ok=True)
    if make_images and isinstance(data, dict):
        rng = np.random.default_rng(0)
        for img in data.get("images", []):
            with contextlib.suppress(KeyError, TypeError, ValueError):  # broken on purpose
                size = (img["height"], img["width"], 3)
                pixels = rng.integers(0, 256, size=size, dtype=np.uint8)
                Image.fromarray(pixels).save(images_dir / img["file_name"])
    json_path = tmp_path / "ann.json"
    json_path.write_text(data if isinstance(data, str) else json.dumps(data))
    return json_path, images_dir


def _load(tmp_path, data, **kwargs):
    return CocoDataset(*_write(tmp_path, data), **kwargs)


# ---------------------------------------------------------------- fatal structure problems
def _set(path, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _delete(key):
    return lambda data: data.pop(key)


_FATAL = [
    (lambda d: "{oops", "not valid JSON"),
    (lambda d: "[1, 2]", "must hold a JSON object, got list"),
    (_delete("images"), "missing key 'images'"),
    (_delete("categories"), "missing key 'categories'"),
    (_set(["images"], {"id": 1}), "'images' must be a list, got dict"),
    (_set(["annotations"], "none"), "'annotations' must be a list, got str"),
    (_set(["images", 0, "id"], "1"), r"images\[0\] \(id '1'\): 'id' must be an integer"),
    (_set(["images", 0, "width"], None), r"images\[0\] \(id 1\): 'height' and 'width'"),
    (_set(["images", 0, "file_name"], 3), "'file_name' must be a non-empty string"),
    (_set(["images", 1], {"id": 1, "file_name": "b.png", "height": 5, "width": 5}),
     r"images\[1\] \(id 1\): duplicate image id 1"),
    (_set(["annotations", 1, "id"], 7), r"annotations\[1\] \(id 7\): duplicate annotation id 7"),
    (_set(["annotations", 0, "bbox"], "abc"), r"annotations\[0\] \(id 7\): bbox must be"),
    (_set(["annotations", 0, "bbox"], [1, 2, 3]), r"annotations\[0\] \(id 7\): bbox must be"),
    (_set(["annotations", 0, "image_id"], None), r"annotations\[0\].*'image_id' must be an int"),
    (_set(["annotations", 0, "iscrowd"], 2), "'iscrowd' must be 0 or 1"),
    (_set(["annotations", 0], [1, 2]), r"annotations\[0\] \(id None\): not an object"),
    (_set(["categories", 1], {"id": 1, "name": "again"}), "duplicate category id 1"),
    (_set(["categories", 0, "id"], "x"), r"categories\[0\].*'id' must be an integer"),
    (_set(["categories"], []), "'categories' is empty"),
]


@pytest.mark.parametrize("change,message", _FATAL)
def test_structure_errors_name_file_and_record(tmp_path, change, message):
    data = _coco(images=((1, 20, 30), (2, 10, 10)), annotations=[_ann(7), _ann(8)],
                 categories=((1, "a"), (2, "b")))
    replaced = change(data)
    with pytest.raises(DatasetError, match=message) as info:
        _load(tmp_path, replaced if isinstance(replaced, str) else data)
    assert "ann.json" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_json_and_missing_images_dir(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.json: annotation file not found"):
        CocoDataset(tmp_path / "nope.json", tmp_path)
    json_path, _ = _write(tmp_path, _coco(annotations=[_ann(1)]))
    with pytest.raises(DatasetError, match=r"ann\.json: images folder .*elsewhere not found"):
        CocoDataset(json_path, tmp_path / "elsewhere")


def test_missing_annotations_key_means_negatives(tmp_path):
    data = _coco()
    del data["annotations"]
    ds = _load(tmp_path, data)
    image, targets, meta = ds[0]
    assert len(ds) == 1 and image.shape == (3, 20, 30)
    assert targets.boxes.shape == (0, 4) and targets.boxes.dtype == torch.float32
    assert targets.labels.shape == (0,) and targets.labels.dtype == torch.int64
    assert targets.masks.shape == (0, 20, 30) and targets.masks.dtype == torch.uint8
    assert meta["crowd_boxes"].shape == (0, 4)


# ------------------------------------------------------------ skipped single annotations
_RLE_600 = {"size": [20, 30], "counts": [600]}
_SKIPPED = [
    ({"image_id": 99}, "unknown image id"),
    ({"category_id": 5}, "unknown category id"),
    ({"bbox": [2, 3, 0, 4]}, "zero-size box"),
    ({"bbox": [2, 3, 5, -1]}, "zero-size box"),
    ({"bbox": [40, 3, 5, 4]}, "box outside image"),
    ({"segmentation": [[1, 1, 5, 1]]}, "polygon with < 3 points"),
    ({"segmentation": [[1, 1, 5, 1, 5]]}, "polygon with < 3 points"),
    ({"segmentation": {"foo": 1}}, "segmentation of unknown format"),
    ({"segmentation": [1, 2, 3, 4, 5, 6]}, "segmentation of unknown format"),
    ({"segmentation": []}, "no segmentation"),
    ({"segmentation": [[40, 40, 50, 40, 50, 50]]}, "mask outside image"),
    ({"bbox": None, "segmentation": [[-9, 1, -5, 1, -5, 5]]}, "mask outside image"),
    ({"segmentation": _RLE_600}, "empty mask"),
    ({"segmentation": {"size": [30, 20], "counts": [600]}}, "RLE size differs from image size"),
    ({"segmentation": {"size": [20, 30], "counts": [100, 50]}}, "corrupt RLE counts"),
    ({"segmentation": {"size": [20, 30], "counts": "!!"}}, "corrupt RLE counts"),
]


@pytest.mark.parametrize("change,reason", _SKIPPED)
def test_bad_annotation_is_skipped_and_counted(tmp_path, caplog, change, reason):
    data = _coco(annotations=[_ann(1), _ann(7, **change)])
    with caplog.at_level(logging.WARNING, logger="maskrcnn.data.coco"):
        ds = _load(tmp_path, data)
    assert ds.skipped == {reason: 1}
    assert f"skipped 1 annotations: 1 {reason}" in ds.summary()
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "ann.json" in warning and reason in warning and "annotation id 7" in warning
    _, targets, _ = ds[0]
    assert len(targets) == 1 and targets.masks.shape == (1, 20, 30)


def test_summary_counts_reasons(tmp_path):
    anns = [_ann(1), _ann(2, bbox=[1, 1, 0, 3]), _ann(3, bbox=[1, 1, 3, 0]),
            _ann(4, segmentation=[[1, 1, 2, 2]])]
    ds = _load(tmp_path, _coco(annotations=anns))
    assert "skipped 3 annotations: 2 zero-size box, 1 polygon with < 3 points" in ds.summary()
    assert ds.skipped == {"zero-size box": 2, "polygon with < 3 points": 1}


def test_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match=r"ann\.json: no usable images"):
        _load(tmp_path, _coco(images=()))
    bad_only = _coco(annotations=[_ann(1, bbox=[0, 0, 0, 0])])
    with pytest.raises(DatasetError, match=r"ann\.json: no usable images.*1 zero-size box"):
        _load(tmp_path, bad_only, keep_empty=False)


def test_keep_empty(tmp_path):
    data = _coco(images=((1, 20, 30), (2, 16, 16)), annotations=[_ann(1)])
    assert len(_load(tmp_path, data)) == 2
    ds = _load(tmp_path, data, keep_empty=False)
    assert len(ds) == 1 and ds.image_ids == [1]
    assert "dropped 1 images without annotations" in ds.summary()


# ------------------------------------------------------------------ masks and boxes
def _run_lengths(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a [H, W] mask (column-major, starting with zeros)."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


def test_masks_equal_pycocotools(tmp_path):
    rng = np.random.default_rng(0)
    blob = np.zeros((24, 32), dtype=np.uint8)
    blob[5:17, 9:25] = rng.integers(0, 2, size=(12, 16))
    blob[0, 0] = 1  # run starting with ones: leading zero count
    other = (rng.uniform(size=(24, 32)) < 0.3).astype(np.uint8)
    compressed = mask_utils.encode(np.asfortranarray(other))
    anns = [
        _ann(1, bbox=[20, 2, 15, 9],  # two parts, one leaving the image on the right
             segmentation=[[20.5, 2, 40, 6, 22, 11], [1, 15, 6, 15.5, 4, 22.3]]),
        _ann(2, bbox=[0, 0, 25, 17], segmentation={"size": [24, 32], "counts": _run_lengths(blob)}),
        _ann(3, category_id=2, bbox=[0, 0, 32, 24],
             segmentation={"size": [24, 32], "counts": compressed["counts"].decode()}),
    ]
    data = _coco(images=((5, 24, 32),), annotations=[dict(a, image_id=5) for a in anns],
                 categories=((1, "a"), (2, "b")))
    ds = _load(tmp_path, data)
    _, targets, meta = ds[0]
    reference = COCO(str(tmp_path / "ann.json"))
    expected = np.stack([reference.annToMask(a) for a in reference.loadAnns([1, 2, 3])])
    torch.testing.assert_close(targets.masks, torch.from_numpy(expected))
    assert (targets.masks[1].numpy() == blob).all() and (targets.masks[2].numpy() == other).all()
    assert targets.masks[0, :, 30:].any()  # the clipped part reaches the right edge
    expected_boxes = torch.tensor([[20, 2, 32, 11], [0, 0, 25, 17], [0, 0, 32, 24]]).float()
    torch.testing.assert_close(targets.boxes, expected_boxes)
    torch.testing.assert_close(targets.labels, torch.tensor([1, 1, 2]))
    assert (meta["image_id"], meta["file_name"], meta["orig_size"]) == (5, "img5.png", (24, 32))


def test_rle_string_counts_match_run_lengths():
    rng = np.random.default_rng(1)
    masks = [rng.uniform(size=(37, 23)) < p for p in (0.05, 0.5, 0.95)]
    big = np.zeros((300, 400), dtype=bool)
    big[20:280, 30:390] = True  # long runs: several 5-bit chunks and negative differences
    big[150, 200] = False
    for mask in [*masks, big, np.ones((5, 5), bool)]:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = rle_string_counts(rle["counts"])
        assert counts.tolist() == _run_lengths(mask)
    assert rle_string_counts(b"") is None
    assert rle_string_counts(b"!!") is None  # below the alphabet
    assert rle_string_counts(b"0P") is None  # ends with a continuation chunk


def test_bbox_clipped_or_derived_from_segmentation(tmp_path):
    anns = [_ann(1, bbox=[-3, 15, 10, 20], segmentation=[[0, 15, 7, 15, 7, 20, 0, 20]]),
            _ann(2, bbox=None, segmentation=[[4, 5, 9.5, 5, 9.5, 12, 4, 12]])]
    _, targets, _ = _load(tmp_path, _coco(annotations=anns))[0]
    torch.testing.assert_close(targets.boxes, torch.tensor([[0, 15, 7, 20], [4, 5, 9.5, 12]]))


def test_crowd_kept_apart(tmp_path):
    crowd = _ann(2, bbox=[10, 2, 6, 6], iscrowd=1,
                 segmentation={"size": [20, 30], "counts": [200, 30, 370]})
    ds = _load(tmp_path, _coco(annotations=[_ann(1), crowd]))
    _, targets, meta = ds[0]
    assert len(targets) == 1 and ds.num_crowd == 1 and "1 crowd" in ds.summary()
    torch.testing.assert_close(meta["crowd_boxes"], torch.tensor([[10.0, 2, 16, 8]]))


def test_boxes_only(tmp_path):
    anns = [_ann(1, segmentation={"nonsense": True}), _ann(2)]
    ds = _load(tmp_path, _coco(annotations=anns), masks=False)
    _, targets, _ = ds[0]
    assert targets.masks is None and len(targets) == 2 and ds.skipped == {}


def test_category_mapping_round_trip(tmp_path):
    cats = ((90, "ninety"), (3, "three"), (17, "seventeen"))
    anns = [_ann(1, category_id=17), _ann(2, category_id=90), _ann(3, category_id=3)]
    ds = _load(tmp_path, _coco(annotations=anns, categories=cats))
    assert ds.category_ids == [3, 17, 90] and ds.num_classes == 4
    assert ds.class_names == ["background", "three", "seventeen", "ninety"]
    _, targets, _ = ds[0]
    assert targets.labels.tolist() == [2, 3, 1]
    assert [ds.label_to_category_id[int(v)] for v in targets.labels] == [17, 90, 3]
    assert all(ds.category_id_to_label[ds.label_to_category_id[k]] == k for k in (1, 2, 3))


# ------------------------------------------------------------------- image files
def test_image_problems_at_load_and_in_check_files(tmp_path):
    data = _coco(images=((1, 20, 30), (2, 20, 30), (3, 20, 30), (4, 8, 8)),
                 annotations=[_ann(1)])
    json_path, images_dir = _write(tmp_path, data)
    (images_dir / "img2.png").unlink()
    (images_dir / "img3.png").write_text("not an image")
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(images_dir / "img4.png")
    ds = CocoDataset(json_path, images_dir)
    assert ds[0][0].shape == (3, 20, 30)
    with pytest.raises(ImageError, match=r"img2\.png: image file not found"):
        ds[1]
    with pytest.raises(ImageError, match=r"img3\.png: not an image file"):
        ds[2]
    with pytest.raises(ImageError, match=r"img4\.png: image is 9x8 .* ann\.json says 8x8"):
        ds[3]
    problems = ds.check_files()
    assert [p.rsplit("/", 1)[-1] for p, _ in problems] == ["img2.png", "img3.png", "img4.png"]
    assert "not found" in problems[0][1] and "9x8" in problems[2][1]
