"""A synthetic COCO dataset of coloured shapes on textured backgrounds.

`write_shapes_dataset` writes out_dir/images/*.png, out_dir/train.json and out_dir/val.json.
Each image holds 2-6 circles, squares, triangles and stars (12%-45% of the image side,
rotated, saturated colours) over a desaturated texture (gradient, stripes or smooth noise).
Later shapes occlude earlier ones: each annotation is the visible part of its shape, written
as a polygon when nothing covers it and as compressed RLE otherwise, so both formats are
exercised. Shape pixels are exactly the pycocotools rasterisation of the shape's polygon, so
annotations and pixels agree. Deterministic: same arguments, same bytes.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = ("circle", "square", "triangle", "star")
MIN_SIZE, MAX_SIZE = 0.12, 0.45  # shape diameter as a fraction of the image side
MIN_VISIBLE_FRACTION = 0.5  # placements that hide more of an earlier shape are retried
DROP_FRACTION = 0.25  # annotations whose visible part is smaller than this are dropped
_PLACEMENT_TRIES = 20


def write_shapes_dataset(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 200,
    num_val: int = 50,
    image_size: int = 256,
    seed: int = 0,
    objects: tuple[int, int] = (2, 6),
    shape_size: tuple[float, float] = (MIN_SIZE, MAX_SIZE),
) -> dict[str, Any]:
    """Write the shapes dataset; return paths and counts.

    objects: the range (inclusive) of shapes tried per image; shape_size: the range of
    their diameters as a fraction of the image side (defaults: the demo's data; e.g.
    objects=(40, 60), shape_size=(0.06, 0.1) gives small dense objects).

    Returns dict(root, images_dir, train_json, val_json, class_names (index = label, 0 =
    "background"), num_images {split: n}, num_annotations {split: n}).
    """
    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CATEGORIES)]
    info: dict[str, Any] = {
        "root": str(root),
        "images_dir": str(images_dir),
        "class_names": ["background", *CATEGORIES],
        "num_images": {},
        "num_annotations": {},
    }
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_id, i])
            pixels, annotated = make_shapes_image(rng, image_size, objects, shape_size)
            file_name = f"{split}_{i:05d}.png"
            Image.fromarray(pixels).save(images_dir / file_name, compress_level=1, compress_type=2)
            images.append({"id": i + 1, "file_name": file_name,
                           "height": image_size, "width": image_size})
            for obj in annotated:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **obj})
        coco = {"info": {"description": f"synthetic shapes, seed {seed}"},
                "images": images, "annotations": annotations, "categories": categories}
        json_path = root / f"{split}.json"
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(coco, f)
        info[f"{split}_json"] = str(json_path)
        info["num_images"][split] = len(images)
        info["num_annotations"][split] = len(annotations)
    return info


def make_shapes_image(
    rng: np.random.Generator, size: int, objects: tuple[int, int] = (2, 6),
    shape_size: tuple[float, float] = (MIN_SIZE, MAX_SIZE),
) -> tuple[np.ndarray, list[dict]]:
    """One image [size, size, 3] uint8 and its annotations (COCO fields without ids)."""
    canvas = _background(rng, size)  # [S, S, 3] float32 in [0, 1]
    shapes: list[tuple[int, list[float], np.ndarray]] = []  # (category id, polygon, mask)
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        placed = _place_shape(rng, size, [s[2] for s in shapes], shape_size)
        if placed is not None:
            shapes.append(placed)
    hues = _distinct_hues(rng, len(shapes))
    for (_, _, mask), hue in zip(shapes, hues):
        colour = colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0))
        canvas[mask] = np.asarray(colour, dtype=np.float32)
    canvas += 0.025 * rng.standard_normal(canvas.shape, dtype=np.float32)
    pixels = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return pixels, _annotations(shapes)


def _annotations(shapes: list[tuple[int, list[float], np.ndarray]]) -> list[dict]:
    """Visible part of each shape (later shapes on top) as COCO annotation fields."""
    objects = []
    covered = None
    for category_id, polygon, mask in reversed(shapes):
        visible = mask if covered is None else mask & ~covered
        covered = mask.copy() if covered is None else covered | mask
        area = int(visible.sum())
        if area < max(DROP_FRACTION * mask.sum(), 32):
            continue  # tiny remnant: not worth a target
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        if area == int(mask.sum()):  # nothing covers it: the polygon is exact
            segmentation: Any = [polygon]
        else:
            segmentation = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        objects.append({
            "category_id": category_id,
            "segmentation": segmentation,
            "area": float(area),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],  # pixel-edge extent, xywh
            "iscrowd": 0,
        })
    return objects[::-1]


def _place_shape(
    rng: np.random.Generator, size: int, earlier: list[np.ndarray],
    shape_size: tuple[float, float] = (MIN_SIZE, MAX_SIZE),
) -> tuple[int, list[float], np.ndarray] | None:
    """Random shape that leaves each earlier shape at least half visible, or None."""
    for _ in range(_PLACEMENT_TRIES):
        category = int(rng.integers(len(CATEGORIES)))
        radius = 0.5 * size * rng.uniform(*shape_size)
        centre = rng.uniform(0.5 * radius, size - 0.5 * radius, size=2)
        polygon = _shape_polygon(category, centre, radius, rng.uniform(0.0, 2.0 * math.pi))
        mask = _rasterize(polygon, size)
        if mask.sum() < 0.5 * _polygon_area(polygon):
            continue  # mostly outside the image
        if all((m & ~mask).sum() >= MIN_VISIBLE_FRACTION * m.sum() for m in earlier):
            return category + 1, polygon, mask
    return None


def _shape_polygon(category: int, centre: np.ndarray, radius: float, angle: float) -> list[float]:
    """Flat [x0, y0, x1, y1, ...] outline, rounded to 0.01 px as written to the JSON."""
    name = CATEGORIES[category]
    if name == "circle":
        n, radii = 48, np.full(48, radius)
    elif name == "square":
        n, radii = 4, np.full(4, radius)
    elif name == "triangle":
        n, radii = 3, np.full(3, radius * 1.1)
    else:  # five-pointed star: outer and inner vertices alternate
        n, radii = 10, np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    theta = angle + 2.0 * math.pi * np.arange(n) / n  # [n]
    xy = centre[None, :] + radii[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return [round(float(v), 2) for v in xy.reshape(-1)]  # [n, 2] -> [2n]


def _rasterize(polygon: list[float], size: int) -> np.ndarray:
    """[size, size] bool mask of a polygon, as pycocotools decodes it."""
    rles = mask_utils.frPyObjects([polygon], size, size)
    return mask_utils.decode(rles)[:, :, 0].astype(bool)  # [S, S, 1] -> [S, S]


def _polygon_area(polygon: list[float]) -> float:
    """Shoelace area of a flat polygon."""
    xy = np.asarray(polygon).reshape(-1, 2)  # [n, 2]
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _distinct_hues(rng: np.random.Generator, n: int) -> np.ndarray:
    """n hues in [0, 1), evenly spread from a random start and shuffled."""
    return (rng.uniform() + rng.permutation(n) / max(n, 1)) % 1.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Desaturated texture [size, size, 3] float32: gradient, stripes or smooth noise."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size  # [S, S] each
    angle = rng.uniform(0.0, 2.0 * math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)  # [S, S]
    kind = int(rng.integers(3))
    if kind == 0:  # linear gradient
        t = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    elif kind == 1:  # stripes, soft or hard
        t = 0.5 + 0.5 * np.sin(2.0 * math.pi * rng.uniform(3.0, 12.0) * along + rng.uniform(0, 7))
        if rng.uniform() < 0.5:
            t = (t > 0.5).astype(np.float32)
    else:  # smooth noise: a coarse random grid upsampled bilinearly
        cells = int(rng.integers(3, 12))
        coarse = rng.uniform(0.0, 1.0, size=(cells, cells)).astype(np.float32)
        t = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))
    colours = [
        colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.2, 0.85))
        for _ in range(2)
    ]
    low, high = (np.asarray(c, dtype=np.float32) for c in colours)
    t = t.astype(np.float32)[:, :, None]  # [S, S] -> [S, S, 1]
    return (low * (1.0 - t) + high * t).astype(np.float32)  # [S, S, 3]
