"""Checking COCO records one by one: types, boxes and segmentations.

Structure problems (wrong types, duplicate ids) raise `DatasetError`; problems of a single
annotation return a short reason string, and the dataset skips that annotation and counts it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

# Reasons an annotation is skipped (keys of CocoDataset.skipped).
UNKNOWN_IMAGE = "unknown image id"
UNKNOWN_CATEGORY = "unknown category id"
ZERO_SIZE_BOX = "zero-size box"
BOX_OUTSIDE = "box outside image"
NO_BOX = "no bbox and no usable segmentation"
SHORT_POLYGON = "polygon with < 3 points"
UNKNOWN_SEGMENTATION = "segmentation of unknown format"
NO_SEGMENTATION = "no segmentation"
MASK_OUTSIDE = "mask outside image"
EMPTY_MASK = "empty mask"
RLE_SIZE = "RLE size differs from image size"
CORRUPT_RLE = "corrupt RLE counts"


class DatasetError(ValueError):
    """A dataset file that cannot be used at all (not JSON, wrong structure, no images)."""


def as_int(value: Any) -> int | None:
    """An int, or an integral float, as int; anything else (bool included) -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


def parse_bbox(bbox: Any, height: int, width: int) -> tuple[list[float] | None, str | None]:
    """COCO [x, y, w, h] -> (clipped [x1, y1, x2, y2], None) or (None, skip reason).

    Raises TypeError when bbox is not a list of 4 finite numbers (a structure error).
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(is_number, bbox)):
        raise TypeError(f"bbox must be a list of 4 finite numbers, got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None, ZERO_SIZE_BOX
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None, BOX_OUTSIDE
    return [x1, y1, x2, y2], None


def parse_segmentation(seg: Any, height: int, width: int) -> tuple[Any, str | None]:
    """Normalise a COCO segmentation for decoding later.

    Returns (("poly", [[x, y, ...], ...]) | ("rle", {"size", "counts": bytes}), None), or
    (None, skip reason). Polygon parts with fewer than 3 points are dropped; the annotation is
    skipped only when no part is left. Uncompressed RLE is compressed here.
    """
    if seg is None or (isinstance(seg, (list, dict)) and len(seg) == 0):
        return None, NO_SEGMENTATION
    if isinstance(seg, list):
        return _parse_polygons(seg, height, width)
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        return _parse_rle(seg, height, width)
    return None, UNKNOWN_SEGMENTATION


def _parse_polygons(seg: list, height: int, width: int) -> tuple[Any, str | None]:
    """List of flat [x0, y0, x1, y1, ...] polygons -> ("poly", parts) or a skip reason."""
    if not all(isinstance(p, list) and all(map(is_number, p)) for p in seg):
        return None, UNKNOWN_SEGMENTATION
    parts = [[float(v) for v in p] for p in seg if len(p) >= 6 and len(p) % 2 == 0]
    if not parts:
        return None, SHORT_POLYGON
    xy = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]).reshape(-1, 2)  # [P, 2]
    x_lo, y_lo = xy.min(axis=0)
    x_hi, y_hi = xy.max(axis=0)
    if x_hi <= 0 or y_hi <= 0 or x_lo >= width or y_lo >= height:
        return None, MASK_OUTSIDE
    return ("poly", parts), None


def _parse_rle(seg: dict, height: int, width: int) -> tuple[Any, str | None]:
    """RLE dict (counts as list or compressed string) -> ("rle", compressed) or a reason."""
    size, counts = seg["size"], seg["counts"]
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        return None, UNKNOWN_SEGMENTATION
    if (as_int(size[0]), as_int(size[1])) != (height, width):
        return None, RLE_SIZE
    if isinstance(counts, list):
        if not all(as_int(c) is not None and c >= 0 for c in counts):
            return None, CORRUPT_RLE
        run_lengths = np.asarray(counts, dtype=np.int64)
        if run_lengths.sum() != height * width:
            return None, CORRUPT_RLE
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": list(counts)},
                                     height, width)
    elif isinstance(counts, (str, bytes)):
        try:
            raw = counts.encode("ascii") if isinstance(counts, str) else counts
        except UnicodeEncodeError:
            return None, CORRUPT_RLE
        run_lengths = rle_string_counts(raw)
        if run_lengths is None or (run_lengths < 0).any() or run_lengths.sum() != height * width:
            return None, CORRUPT_RLE
        rle = {"size": [height, width], "counts": raw}
    else:
        return None, UNKNOWN_SEGMENTATION
    if run_lengths[1::2].sum() == 0:
        return None, EMPTY_MASK
    return ("rle", rle), None


def rle_string_counts(raw: bytes) -> np.ndarray | None:
    """Decode COCO's compressed RLE string to run lengths [M] int64 (None if malformed).

    The format (pycocotools rleToString): each count is written in 5-bit chunks, low first,
    as chars 48 + chunk (bit 0x20 = more chunks follow, bit 0x10 of the last chunk = sign);
    counts from the fourth on are stored as differences to the count two places before.
    Checked here so that pycocotools never decodes counts that overrun the mask buffer.
    """
    chars = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48  # [L]
    if chars.size == 0 or (chars < 0).any() or (chars > 63).any():
        return None
    more = (chars & 0x20) != 0
    if more[-1]:
        return None
    ends = np.flatnonzero(~more)  # [M] last char of each value
    starts = np.concatenate(([0], ends[:-1] + 1))  # [M]
    group = np.repeat(np.arange(ends.size), ends - starts + 1)  # [L] value index of each char
    chunk_pos = np.arange(chars.size) - starts[group]  # [L]
    if chunk_pos.max() > 11:  # more than 60 bits: cannot be a valid count
        return None
    values = np.add.reduceat((chars & 0x1F) << (5 * chunk_pos), starts)  # [M]
    negative = (chars[ends] & 0x10) != 0
    values[negative] |= -1 << (5 * (chunk_pos[ends][negative] + 1))
    counts = values.copy()
    counts[1::2] = np.cumsum(values[1::2])  # c1 = v1, c3 = v3 + c1, ...
    counts[2::2] = np.cumsum(values[2::2])  # c2 = v2, c4 = v4 + c2, ...
    return counts


def segmentation_bbox(parsed: Any, height: int, width: int) -> list[float] | None:
    """xyxy box of a parsed segmentation, clipped to the image (None when empty)."""
    kind, obj = parsed
    if kind == "poly":
        xy = np.concatenate([np.asarray(p) for p in obj]).reshape(-1, 2)  # [P, 2]
        x1, y1 = np.clip(xy.min(axis=0), 0, [width, height])
        x2, y2 = np.clip(xy.max(axis=0), 0, [width, height])
    else:
        x1, y1, w, h = mask_utils.toBbox(obj)
        x2, y2 = x1 + w, y1 + h
    if x2 <= x1 or y2 <= y1:
        return None
    return [float(x1), float(y1), float(x2), float(y2)]


def decode_masks(parsed: list[Any], height: int, width: int) -> np.ndarray:
    """Parsed segmentations of one image -> [G, H, W] uint8 binary masks (pycocotools)."""
    if not parsed:
        return np.zeros((0, height, width), dtype=np.uint8)
    rles = []
    for kind, obj in parsed:  # pycocotools converts one object at a time
        if kind == "poly":
            rles.append(mask_utils.merge(mask_utils.frPyObjects(obj, height, width)))
        else:
            rles.append(obj)
    masks = mask_utils.decode(rles)  # [H, W, G] uint8, Fortran order
    return np.ascontiguousarray(masks.transpose(2, 0, 1))  # [G, H, W]
