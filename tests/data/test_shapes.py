"""The synthetic shapes dataset: deterministic, valid COCO, annotations match the pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.shapes import CATEGORIES, write_shapes_dataset

# pycocotools' decode trips numpy 2's __array__ copy deprecation on every call: not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


SMALL = dict(num_train=12, num_val=4, image_size=96)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), seed=3, **SMALL)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_deterministic_bit_for_bit(shapes, tmp_path):
    again = write_shapes_dataset(tmp_path / "again", seed=3, **SMALL)
    original = _files(Path(shapes["root"]))
    assert _files(tmp_path / "again") == original
    assert len(original) == 12 + 4 + 2
    other = write_shapes_dataset(tmp_path / "other", seed=4, **SMALL)
    assert _files(tmp_path / "other")["train.json"] != original["train.json"]
    assert again["num_annotations"] == shapes["num_annotations"]
    assert other["class_names"] == ["background", *CATEGORIES]


def test_coco_structure(shapes):
    for split, count in (("train", 12), ("val", 4)):
        with open(shapes[f"{split}_json"]) as f:
            data = json.load(f)
        assert len(data["images"]) == count == shapes["num_images"][split]
        assert [c["id"] for c in data["categories"]] == list(range(1, len(CATEGORIES) + 1))
        assert 3 <= len(data["categories"]) <= 4
        per_image = np.bincount([a["image_id"] for a in data["annotations"]],
                                minlength=count + 1)[1:]
        assert per_image.min() >= 1 and per_image.max() <= 6
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        assert all(a["iscrowd"] == 0 for a in data["annotations"])


def test_loads_cleanly_and_annotations_match_pixels(shapes):
    ds = CocoDataset(shapes["train_json"], shapes["images_dir"])
    assert ds.skipped == {} and len(ds) == 12 and ds.check_files() == []
    with open(shapes["train_json"]) as f:
        data = json.load(f)
    kinds = {type(a["segmentation"]).__name__ for a in data["annotations"]}
    assert kinds == {"list", "dict"}  # polygons and compressed RLE are both exercised
    areas = iter(a["area"] for a in data["annotations"])
    sizes = []
    for i in range(len(ds)):
        image, targets, _ = ds[i]
        masks = targets.masks.bool()  # [G, H, W]
        assert masks.flatten(1).any(1).all()
        torch.testing.assert_close(targets.boxes, _extents(masks))
        for mask in masks:
            assert mask.sum().item() == next(areas)
            colour = image[:, mask].mean(1)  # [3]: shapes are saturated, backgrounds are not
            assert colour.max() - colour.min() > 0.3
        background = ~masks.any(0)
        grey = image[:, background].mean(1)
        assert grey.max() - grey.min() < 0.3
        sizes += (targets.boxes[:, 2:] - targets.boxes[:, :2]).max(1).values.tolist()
        assert (targets.masks.sum(0) <= 1).all()  # visible parts never overlap
    assert min(sizes) >= 0.05 * 96 and max(sizes) <= 0.5 * 96 + 1
    assert set(torch.cat([ds[i][1].labels for i in range(len(ds))]).tolist()) <= {1, 2, 3, 4}


def _extents(masks: torch.Tensor) -> torch.Tensor:
    """[G, H, W] bool -> [G, 4] pixel-edge boxes (x1, y1, x2 + 1, y2 + 1)."""
    rows, cols = masks.any(2), masks.any(1)  # [G, H], [G, W]
    ys = torch.arange(masks.shape[1])
    xs = torch.arange(masks.shape[2])
    big = max(masks.shape[1:]) + 1
    x1 = torch.where(cols, xs, big).min(1).values
    x2 = torch.where(cols, xs, -1).max(1).values + 1
    y1 = torch.where(rows, ys, big).min(1).values
    y2 = torch.where(rows, ys, -1).max(1).values + 1
    return torch.stack([x1, y1, x2, y2], 1).float()
