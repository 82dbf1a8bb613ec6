"""A small real-photo instance-segmentation set: three classes cut from the sample photos
bundled with scikit-image, annotated by classical segmentation checked by eye.

    python3 -m venv /tmp/skvenv && /tmp/skvenv/bin/pip install scikit-image
    /tmp/skvenv/bin/python benchmarks/make_photo_set.py --out /tmp/photos [--check]

Needs scikit-image (with its scipy, numpy, Pillow) in an environment of its own: it is not
a dependency of maskrcnn and nothing in the package or the tests imports this script.
Everything comes from files inside the scikit-image wheel; nothing is downloaded.

    coin     skimage.data.coins()                 museum photo of 24 Greek coins (303x384, gray)
    galaxy   skimage.data.hubble_deep_field()     Hubble eXtreme Deep Field (872x1000, colour)
    nucleus  skimage.data.immunohistochemistry()  stained colon tissue (512x512, colour): the
             blue nuclei of the connective tissue between the glands; nuclei inside the
             brown-stained glands are not annotated

Writes OUT/images/*.jpg (18 crops, sides of 132-340 px), OUT/train.json (14 images),
OUT/val.json (4 images): COCO instances, one polygon per object. Validation crops come from
parts of each photo that no training crop covers (objects on the dividing line, e.g. one
coin, are cut there). An object cut by a crop's border is an instance when at least 40 % of
it is inside, otherwise it joins the image's crowd region (`iscrowd: 1`, RLE; ignored in
training and evaluation), as do the faint sources of the deep field below the galaxy size
limit. `--check` also draws every image with its annotations to OUT/check/*.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage import color, data, feature, filters, measure, morphology, segmentation

CATEGORIES = [{"id": 1, "name": "coin"}, {"id": 2, "name": "galaxy"},
              {"id": 3, "name": "nucleus"}]

# (source, split, y0, x0, height, width)
CROPS = [
    ("coins", "train", 0, 0, 225, 244), ("coins", "train", 85, 0, 218, 244),
    ("coins", "train", 0, 0, 303, 200), ("coins", "train", 0, 60, 303, 184),
    ("coins", "train", 40, 10, 220, 220), ("coins", "val", 0, 244, 303, 140),
    ("hubble", "train", 0, 0, 320, 320), ("hubble", "train", 320, 0, 320, 320),
    ("hubble", "train", 100, 320, 320, 320), ("hubble", "train", 460, 320, 340, 320),
    ("hubble", "val", 40, 680, 300, 320), ("hubble", "val", 480, 680, 340, 320),
    ("ihc", "train", 190, 80, 230, 260), ("ihc", "train", 300, 60, 212, 270),
    ("ihc", "train", 200, 150, 240, 220), ("ihc", "train", 0, 380, 250, 132),
    ("ihc", "train", 120, 200, 180, 170), ("ihc", "val", 260, 370, 252, 142),
]
CATEGORY_OF = {"coins": 1, "hubble": 2, "ihc": 3}
MIN_VISIBLE = 0.4  # share of an object inside a crop for it to be an instance
MIN_AREA = {"coins": 40, "hubble": 30, "ihc": 20}  # pixels inside the crop


def coins() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sobel elevation + watershed from dark / bright markers (scikit-image's coins
    tutorial), holes filled, each coin replaced by its convex hull (two coins had a notch
    where their rim is dark)."""
    img = data.coins()
    markers = np.zeros(img.shape, np.uint8)
    markers[img < 30], markers[img > 150] = 1, 2
    fg = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(img), markers) == 2)
    fg = ndi.binary_opening(fg, morphology.disk(2))
    labels, _ = ndi.label(fg)
    hulls = np.zeros_like(labels)
    for region in measure.regionprops(labels):
        if region.area < 500:  # specks of the background
            continue
        r0, c0, r1, c1 = region.bbox
        hull = morphology.convex_hull_image(labels[r0:r1, c0:c1] == region.label)
        hulls[r0:r1, c0:c1][hull] = region.label
    return np.stack([img] * 3, -1), hulls, np.zeros(img.shape, bool)


def hubble() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brightest channel smoothed (sigma 1) above 50 of 255; sources of 30 px or more are
    galaxies (the few stars among them included), smaller ones go to the crowd region;
    holes filled."""
    img = data.hubble_deep_field()
    bright = filters.gaussian(img.max(-1).astype(float), 1.0, preserve_range=True) > 50
    bright = ndi.binary_fill_holes(bright)
    labels, _ = ndi.label(bright)
    areas = np.bincount(labels.ravel())
    big = (areas >= 30)[labels] & (labels > 0)
    labels[~big] = 0
    return img, labels, bright & ~big


def ihc() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour deconvolution (haematoxylin / DAB); connective tissue = low DAB (sigma 4)
    in pieces of 3000 px or more; nuclei = haematoxylin (sigma 1) above Otsu's threshold
    there, touching nuclei split by a watershed on the distance transform."""
    img = data.immunohistochemistry()
    hed = color.rgb2hed(img)
    haem = filters.gaussian(hed[..., 0], 1.0)
    stroma = filters.gaussian(hed[..., 2], 4.0) < 0.04
    pieces, _ = ndi.label(ndi.binary_opening(stroma, morphology.disk(3)))
    stroma = (np.bincount(pieces.ravel()) >= 3000)[pieces] & (pieces > 0)
    nuclei = (haem > filters.threshold_otsu(haem[stroma]) * 1.1) & stroma
    nuclei = ndi.binary_fill_holes(ndi.binary_opening(nuclei, morphology.disk(1)))
    blobs, _ = ndi.label(nuclei)
    nuclei &= (np.bincount(blobs.ravel()) >= 20)[blobs]
    blobs, _ = ndi.label(nuclei)
    dist = ndi.distance_transform_edt(nuclei)
    peaks = feature.peak_local_max(dist, min_distance=4, labels=blobs, exclude_border=False)
    markers = np.zeros(nuclei.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-dist, markers, mask=nuclei)
    return img, labels, np.zeros(nuclei.shape, bool)


def polygons(mask: np.ndarray) -> list[list[float]]:
    """Contours of a binary mask (no holes here) as COCO polygons: x, y in pixel-edge
    coordinates, one polygon per connected piece (a crop can cut an object in two)."""
    padded = np.pad(mask, 1).astype(float)
    out = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance=0.5)
        if len(contour) < 4:
            continue
        ys, xs = contour[:-1, 0] - 1 + 0.5, contour[:-1, 1] - 1 + 0.5
        area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
        if area >= 4:  # slivers left by the crop
            out.append([round(float(v), 2) for xy in zip(xs, ys) for v in xy])
    return out


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = mask.ravel(order="F")
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": [0] + runs if flat[0] else runs}


def bbox_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def make(out: Path, check: bool) -> dict:
    sources = {"coins": coins(), "hubble": hubble(), "ihc": ihc()}
    (out / "images").mkdir(parents=True, exist_ok=True)
    sets = {split: {"images": [], "annotations": [], "categories": CATEGORIES}
            for split in ("train", "val")}
    ann_id, seen = 0, {}  # seen: crops so far per (source, split)
    for image_id, (name, split, y0, x0, h, w) in enumerate(CROPS, 1):
        img, labels, faint = sources[name]
        seen[name, split] = seen.get((name, split), 0) + 1
        file_name = f"{name}_{split}_{seen[name, split]}.jpg"
        Image.fromarray(img[y0:y0 + h, x0:x0 + w]).save(out / "images" / file_name,
                                                         quality=95)
        coco = sets[split]
        coco["images"].append({"id": image_id, "file_name": file_name, "height": h,
                               "width": w})
        crop = labels[y0:y0 + h, x0:x0 + w]
        crowd = faint[y0:y0 + h, x0:x0 + w].copy()
        full_area = np.bincount(labels.ravel())
        for label in np.unique(crop[crop > 0]):
            mask = crop == label
            area = int(mask.sum())
            polys = polygons(mask)
            if area / full_area[label] < MIN_VISIBLE or area < MIN_AREA[name] or not polys:
                crowd |= mask
                continue
            ann_id += 1
            coco["annotations"].append({
                "id": ann_id, "image_id": image_id, "category_id": CATEGORY_OF[name],
                "segmentation": polys, "area": area, "bbox": bbox_of(mask), "iscrowd": 0})
        if crowd.any():
            ann_id += 1
            coco["annotations"].append({
                "id": ann_id, "image_id": image_id, "category_id": CATEGORY_OF[name],
                "segmentation": uncompressed_rle(crowd), "area": int(crowd.sum()),
                "bbox": bbox_of(crowd), "iscrowd": 1})
    for split, coco in sets.items():
        (out / f"{split}.json").write_text(json.dumps(coco))
    if check:
        draw_check(out, sets)
    return sets


def draw_check(out: Path, sets: dict) -> None:
    """Each image with its polygons (green outline, translucent fill) and crowd (yellow)."""
    (out / "check").mkdir(exist_ok=True)
    for coco in sets.values():
        anns: dict[int, list] = {}
        for ann in coco["annotations"]:
            anns.setdefault(ann["image_id"], []).append(ann)
        for image in coco["images"]:
            base = Image.open(out / "images" / image["file_name"]).convert("RGB")
            layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
            draw = ImageDraw.Draw(layer)
            crowd = np.zeros((base.height, base.width), bool)
            for ann in anns.get(image["id"], []):
                if ann["iscrowd"]:
                    rle = ann["segmentation"]
                    flat = np.repeat(np.arange(len(rle["counts"])) % 2, rle["counts"])
                    crowd |= flat.reshape(rle["size"][::-1]).T.astype(bool)
                else:
                    for poly in ann["segmentation"]:
                        draw.polygon(poly, fill=(0, 255, 0, 50), outline=(0, 255, 0, 255))
            yellow = np.zeros((base.height, base.width, 4), np.uint8)
            yellow[crowd] = (255, 255, 0, 120)
            layer = Image.alpha_composite(layer, Image.fromarray(yellow))
            scale = max(1, 600 // max(base.size))
            merged = Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")
            merged = merged.resize((base.width * scale, base.height * scale), Image.NEAREST)
            merged.save(out / "check" / image["file_name"].replace(".jpg", ".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/photos"))
    parser.add_argument("--check", action="store_true", help="draw OUT/check/*.png")
    args = parser.parse_args()
    sets = make(args.out, args.check)
    for split, coco in sets.items():
        per_class = {c["name"]: 0 for c in CATEGORIES}
        crowd = 0
        for ann in coco["annotations"]:
            if ann["iscrowd"]:
                crowd += 1
            else:
                per_class[CATEGORIES[ann["category_id"] - 1]["name"]] += 1
        print(f"{args.out / (split + '.json')}: {len(coco['images'])} images, "
              f"{per_class} instances, {crowd} crowd regions")


if __name__ == "__main__":
    main()
