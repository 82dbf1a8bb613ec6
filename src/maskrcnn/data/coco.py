"""COCO-format instance segmentation datasets.

`CocoDataset` reads a COCO JSON file, checks it, and yields
`(image [3, H, W] float32 in [0, 1], Targets, meta)` per image. Labels are contiguous
(1..K, 0 = background) whatever the category ids; crowd annotations are kept apart.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from maskrcnn.data import coco_records as rec
from maskrcnn.data.coco_records import DatasetError
from maskrcnn.data.images import ImageError, load_image, read_image_size
from maskrcnn.data.transforms import sample_generator
from maskrcnn.structures import Targets

__all__ = ["CocoDataset", "DatasetError", "ImageError"]

logger = logging.getLogger(__name__)
_TOP_LEVEL_KEYS = ("info", "licenses", "images", "annotations", "categories")

Transform = Callable[[Tensor, Targets, dict, torch.Generator], tuple[Tensor, Targets, dict]]


@dataclass
class ImageEntry:
    """One image of the dataset with its checked annotations (numpy, cheap to pickle).

    boxes: [G, 4] float32 xyxy.  labels: [G] int64.  crowd_boxes: [C, 4] float32 xyxy.
    segmentations: G parsed segmentations (see coco_records.parse_segmentation), or None.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    segmentations: list[Any] | None
    crowd_boxes: np.ndarray


class _Skips:
    """Counts skipped annotations per reason and remembers the first offending id."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, Any] = {}

    def add(self, reason: str, ann_id: Any) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.first.setdefault(reason, ann_id)


class CocoDataset(Dataset):
    """Instance segmentation dataset from a COCO JSON file and a folder of images.

    Item i: (image [3, H, W] float32 RGB in [0, 1], Targets(boxes [G, 4] float32 xyxy,
    labels [G] int64 in 1..K, masks [G, H, W] uint8 or None), meta dict(image_id,
    file_name, orig_size=(h, w), crowd_boxes [C, 4] float32)).

    Raises DatasetError (naming the file) for unusable files; skips bad annotations and
    counts them in `skipped` (reason -> count). `masks=False` reads boxes only.
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        images_dir: str | os.PathLike,
        *,
        transforms: Transform | None = None,
        keep_empty: bool = True,
        masks: bool = True,
    ) -> None:
        self.json_path = Path(json_path)
        self.images_dir = Path(images_dir)
        self.transforms = transforms
        self.with_masks = masks
        data = _read_json(self.json_path)
        if not self.images_dir.is_dir():
            raise DatasetError(f"{self.json_path}: images folder {self.images_dir} not found")
        self.category_ids, self.class_names = _parse_categories(data, self.json_path)
        self.category_id_to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.label_to_category_id = {i + 1: c for i, c in enumerate(self.category_ids)}
        entries = _parse_images(data, self.json_path)
        skips = _Skips()
        self.num_crowd = _add_annotations(
            data, self.json_path, entries, self.category_id_to_label, skips, masks
        )
        self.skipped: dict[str, int] = dict(skips.counts)
        for reason, count in skips.counts.items():
            logger.warning(
                "%s: skipped %d annotation(s): %s (first: annotation id %s)",
                self.json_path, count, reason, skips.first[reason],
            )
        images = list(entries.values())
        self.num_empty = sum(len(e.labels) == 0 for e in images)
        self.num_dropped_empty = 0 if keep_empty else self.num_empty
        if not keep_empty:
            images = [e for e in images if len(e.labels) > 0]
        if not images:
            raise DatasetError(f"{self.json_path}: no usable images ({self._summary_of(images)})")
        self.entries: list[ImageEntry] = images
        self.image_ids = [e.image_id for e in images]

    @property
    def num_classes(self) -> int:
        """Number of classes including background (RoIHeadsConfig.num_classes)."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[Tensor, Targets, dict[str, Any]]:
        return self.get(index)

    def get(
        self, index: int, rng: torch.Generator | None = None
    ) -> tuple[Tensor, Targets, dict[str, Any]]:
        """Item `index`, augmented by `transforms` with `rng` (default: seeded by index)."""
        entry = self.entries[index]
        path = self.images_dir / entry.file_name
        image = load_image(path)
        if tuple(image.shape[-2:]) != (entry.height, entry.width):
            raise ImageError(_size_mismatch(path, tuple(image.shape[-2:]), entry, self.json_path))
        masks = None
        if entry.segmentations is not None:
            masks = torch.from_numpy(
                rec.decode_masks(entry.segmentations, entry.height, entry.width)
            )
        targets = Targets(
            boxes=torch.from_numpy(entry.boxes.copy()),
            labels=torch.from_numpy(entry.labels.copy()),
            masks=masks,
        )
        meta = {
            "image_id": entry.image_id,
            "file_name": entry.file_name,
            "orig_size": (entry.height, entry.width),
            "crowd_boxes": torch.from_numpy(entry.crowd_boxes.copy()),
        }
        if self.transforms is not None:
            if rng is None:
                rng = sample_generator(0, 0, index)
            image, targets, meta = self.transforms(image, targets, meta, rng)
        return image, targets, meta

    def check_files(self) -> list[tuple[str, str]]:
        """(path, reason) of each image that is missing, unreadable by its header, or of a
        size other than the JSON says. Pixels are not decoded (truncation shows at load)."""
        problems = []
        for entry in self.entries:
            path = self.images_dir / entry.file_name
            try:
                size = read_image_size(path)
            except ImageError as err:
                problems.append((str(path), str(err)))
                continue
            if size != (entry.height, entry.width):
                problems.append((str(path), _size_mismatch(path, size, entry, self.json_path)))
        return problems

    def summary(self) -> str:
        """One line: images, annotations, and what was skipped and why."""
        return self._summary_of(self.entries)

    def _summary_of(self, entries: list[ImageEntry]) -> str:
        num_anns = sum(len(e.labels) for e in entries)
        num_empty = sum(len(e.labels) == 0 for e in entries)
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items(), key=_by_count))
        text = (
            f"{self.json_path.name}: {len(entries)} images ({num_empty} without annotations), "
            f"{num_anns} annotations, {self.num_crowd} crowd, "
            f"{len(self.category_ids)} categories; skipped {total} annotations"
        )
        if reasons:
            text += f": {reasons}"
        if self.num_dropped_empty:
            text += f"; dropped {self.num_dropped_empty} images without annotations"
        return text


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def _size_mismatch(path: Path, size: tuple, entry: ImageEntry, json_path: Path) -> str:
    msg = (
        f"{path}: image is {size[0]}x{size[1]} (height x width) but {json_path.name} says "
        f"{entry.height}x{entry.width} for image id {entry.image_id}"
    )
    if tuple(size) == (entry.width, entry.height):
        msg += " (rotated? the EXIF orientation is applied when loading)"
    return msg


def _read_json(path: Path) -> dict:
    """Load and check the top level of a COCO file; raise DatasetError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read annotation file ({err})") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a COCO file must hold a JSON object, got "
                           f"{type(data).__name__}")
    for key in ("images", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: not a COCO file: missing key {key!r}")
    unknown = sorted(str(k) for k in data if k not in _TOP_LEVEL_KEYS)
    if unknown:
        logger.warning("%s: unknown top-level key(s) %s ignored (a COCO file has %s)", path,
                       ", ".join(repr(k) for k in unknown), ", ".join(_TOP_LEVEL_KEYS))
    if "annotations" not in data:  # a test set may have none
        logger.warning("%s: no 'annotations' key: every image counts as having no objects",
                       path)
    data.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def _record_error(path: Path, kind: str, index: int, record: Any, problem: str) -> DatasetError:
    rid = record.get("id") if isinstance(record, dict) else None
    return DatasetError(f"{path}: {kind}[{index}] (id {rid!r}): {problem}")


def _parse_categories(data: dict, path: Path) -> tuple[list[int], list[str]]:
    """Sorted category ids and class names (index = label, 0 = "background")."""
    names: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict):
            raise _record_error(path, "categories", i, cat, "not an object")
        cid = rec.as_int(cat.get("id"))
        if cid is None:
            raise _record_error(path, "categories", i, cat, "'id' must be an integer")
        if not isinstance(cat.get("name", ""), str):
            raise _record_error(path, "categories", i, cat, "'name' must be a string")
        if cid in names:
            raise _record_error(path, "categories", i, cat, f"duplicate category id {cid}")
        names[cid] = cat.get("name") or str(cid)
    if not names:
        raise DatasetError(f"{path}: 'categories' is empty")
    ids = sorted(names)
    return ids, ["background"] + [names[c] for c in ids]


def _parse_images(data: dict, path: Path) -> dict[int, ImageEntry]:
    """Image id -> empty ImageEntry, in file order; raise on bad or duplicate records."""
    entries: dict[int, ImageEntry] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise _record_error(path, "images", i, img, "not an object")
        image_id = rec.as_int(img.get("id"))
        if image_id is None:
            raise _record_error(path, "images", i, img, "'id' must be an integer")
        if image_id in entries:
            raise _record_error(path, "images", i, img, f"duplicate image id {image_id}")
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            raise _record_error(path, "images", i, img, "'file_name' must be a non-empty string")
        height, width = rec.as_int(img.get("height")), rec.as_int(img.get("width"))
        if height is None or width is None or height <= 0 or width <= 0:
            raise _record_error(path, "images", i, img,
                                "'height' and 'width' must be positive integers")
        entries[image_id] = ImageEntry(image_id, name, height, width, *_no_annotations())
    return entries


def _no_annotations() -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), [], np.zeros((0, 4), np.float32)


def _add_annotations(
    data: dict,
    path: Path,
    entries: dict[int, ImageEntry],
    cat_to_label: dict[int, int],
    skips: _Skips,
    with_masks: bool,
) -> int:
    """Check every annotation and attach the usable ones to their images; return #crowd."""
    per_image: dict[int, list[tuple[list[float], int, Any]]] = {k: [] for k in entries}
    crowd: dict[int, list[list[float]]] = {k: [] for k in entries}
    seen: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        ann_id, image_id, cat_id, is_crowd = _annotation_fields(path, i, ann, seen)
        entry = entries.get(image_id)
        if entry is None:
            skips.add(rec.UNKNOWN_IMAGE, ann_id)
            continue
        if cat_id not in cat_to_label:
            skips.add(rec.UNKNOWN_CATEGORY, ann_id)
            continue
        try:
            box, seg, reason = _annotation_geometry(ann, entry, with_masks and not is_crowd)
        except TypeError as err:
            raise _record_error(path, "annotations", i, ann, str(err)) from None
        if reason is not None:
            skips.add(reason, ann_id)
        elif is_crowd:
            crowd[image_id].append(box)
        else:
            per_image[image_id].append((box, cat_to_label[cat_id], seg))
    for image_id, entry in entries.items():
        anns = per_image[image_id]
        if anns:
            entry.boxes = np.asarray([a[0] for a in anns], dtype=np.float32).reshape(-1, 4)
            entry.labels = np.asarray([a[1] for a in anns], dtype=np.int64)
        entry.segmentations = [a[2] for a in anns] if with_masks else None
        if crowd[image_id]:
            entry.crowd_boxes = np.asarray(crowd[image_id], dtype=np.float32).reshape(-1, 4)
    return sum(len(c) for c in crowd.values())


def _annotation_fields(path: Path, i: int, ann: Any, seen: set[int]) -> tuple[int, int, int, bool]:
    """(id, image_id, category_id, iscrowd) of annotation i; DatasetError on wrong types."""
    if not isinstance(ann, dict):
        raise _record_error(path, "annotations", i, ann, "not an object")
    fields = [rec.as_int(ann.get(k)) for k in ("id", "image_id", "category_id")]
    for key, value in zip(("id", "image_id", "category_id"), fields):
        if value is None:
            raise _record_error(path, "annotations", i, ann, f"{key!r} must be an integer")
    if fields[0] in seen:
        raise _record_error(path, "annotations", i, ann, f"duplicate annotation id {fields[0]}")
    seen.add(fields[0])
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):  # also accepts False / True
        raise _record_error(path, "annotations", i, ann, f"'iscrowd' must be 0 or 1, got {crowd!r}")
    return fields[0], fields[1], fields[2], bool(crowd)


def _annotation_geometry(
    ann: dict, entry: ImageEntry, need_mask: bool
) -> tuple[list[float] | None, Any, str | None]:
    """(xyxy box, parsed segmentation or None, skip reason or None) of one annotation."""
    h, w = entry.height, entry.width
    box = None
    if ann.get("bbox") is not None:
        box, reason = rec.parse_bbox(ann["bbox"], h, w)
        if reason is not None:
            return None, None, reason
    seg = None
    if need_mask or box is None:
        seg, reason = rec.parse_segmentation(ann.get("segmentation"), h, w)
        if reason is not None:
            return None, None, rec.NO_BOX if box is None and not need_mask else reason
    if box is None:
        box = rec.segmentation_bbox(seg, h, w)
        if box is None:
            return None, None, rec.MASK_OUTSIDE
    return box, seg if need_mask else None, None
