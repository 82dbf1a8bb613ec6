"""Detections to COCO results (the list-of-dicts format of the official evaluation) and back.

A COCO result is one dict per detection::

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float,
     "segmentation": {"size": [H, W], "counts": str}}   # compressed RLE, optional

Boxes leave our xyxy convention here (COCO wants xywh, absolute pixels of the original
image); labels leave our contiguous 1..K-1 numbering for the dataset's category ids.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch

from maskrcnn.structures import MASK_THRESHOLD, Detections, binarize_masks

from .atomic import atomic_write

__all__ = [
    "detections_to_coco",
    "encode_masks",
    "labels_to_category_ids",
    "load_results_json",
    "validate_results",
    "write_json_atomic",
    "write_results_json",
]


ENCODE_CHUNK = 16  # masks per pycocotools call


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict[str, Any]]:
    """Compressed RLE of every mask of one image (pycocotools, ENCODE_CHUNK masks a call:
    its column-major copy of 100 masks of an 800 x 1216 image would be 93 MiB).

    masks: [N, H, W] bool / uint8, or float in [0, 1] (foreground where > 0.5).
    Returns N dicts {"size": [H, W], "counts": str} (counts decoded for JSON).
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu()
        masks = binarize_masks(masks).numpy()
    elif np.issubdtype(masks.dtype, np.floating):
        masks = masks > MASK_THRESHOLD
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    masks = masks.view(np.uint8) if masks.dtype == np.bool_ else masks.astype(np.uint8, copy=False)
    rles = []
    for start in range(0, masks.shape[0], ENCODE_CHUNK):
        # [n, H, W] -> [H, W, n], column-major as pycocotools expects (a copy of n masks)
        hwn = np.asfortranarray(masks[start:start + ENCODE_CHUNK].transpose(1, 2, 0))
        rles.extend(mask_utils.encode(hwn))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def labels_to_category_ids(
    labels: np.ndarray, label_to_category_id: Mapping[int, int] | Sequence[int] | None
) -> np.ndarray:
    """Map contiguous labels [D] int to dataset category ids [D] int64 (identity when None).

    A sequence is indexed by label (entry 0, background, is never used); a mapping is
    looked up by label. Unknown labels raise KeyError.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if label_to_category_id is None:
        return labels.copy()
    if isinstance(label_to_category_id, Mapping):
        missing = {int(x) for x in np.unique(labels)} - {int(k) for k in label_to_category_id}
        if missing:
            raise KeyError(f"labels {sorted(missing)} not in label_to_category_id")
        uniq, inverse = np.unique(labels, return_inverse=True)
        mapped = np.array([label_to_category_id[int(u)] for u in uniq], dtype=np.int64)
        return mapped[inverse].reshape(labels.shape)
    table = np.asarray(label_to_category_id, dtype=np.int64)
    bad = (labels < 0) | (labels >= table.shape[0])
    if bad.any():
        raise KeyError(
            f"labels {sorted(set(labels[bad].tolist()))} outside label_to_category_id "
            f"of length {table.shape[0]}"
        )
    return table[labels]


def detections_to_coco(
    dets: Detections,
    image_id: int,
    label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
    file_name: str | None = None,
) -> list[dict[str, Any]]:
    """COCO results of one image.

    dets: boxes [D, 4] xyxy in original image pixels, scores [D], labels [D] int64,
    masks [D, H, W] (bool, or soft float thresholded at 0.5) or None (then no
    "segmentation" key). Returns D dicts with plain Python types (JSON ready).
    """
    num = len(dets)
    if num == 0:
        return []
    boxes = dets.boxes.detach().cpu().to(torch.float64).numpy()  # [D, 4] xyxy
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # [D, 4]
    scores = dets.scores.detach().cpu().to(torch.float64).numpy()
    category_ids = labels_to_category_ids(dets.labels.detach().cpu().numpy(), label_to_category_id)
    rles = encode_masks(dets.masks) if dets.masks is not None else None
    if rles is not None and len(rles) != num:
        raise ValueError(f"{len(rles)} masks for {num} detections")
    results = []
    for i in range(num):
        res: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_ids[i]),
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores[i]),
        }
        if rles is not None:
            res["segmentation"] = rles[i]
        if file_name is not None:
            res["file_name"] = file_name
        results.append(res)
    return results


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.decode("ascii")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` as JSON to `path` atomically (readers never see a partial file)."""
    atomic_write(path, lambda f: json.dump(obj, f, default=_json_default))


def write_results_json(results: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write a COCO results list to `path` atomically (readers never see a partial file)."""
    write_json_atomic(list(results), path)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, (bool, np.bool_))


def _check_result(res: Any) -> str | None:
    """Why `res` is not a valid COCO result, or None when it is."""
    if not isinstance(res, dict):
        return f"is a {type(res).__name__}, not a dict"
    for key in ("image_id", "category_id", "score"):
        if key not in res:
            return f"has no {key!r}"
    for key in ("image_id", "category_id"):
        if not _is_int(res[key]):
            return f"{key!r} is {res[key]!r}, not an int"
    if not _is_number(res["score"]) or not math.isfinite(res["score"]):
        return f"'score' is {res['score']!r}, not a finite number"
    if "bbox" not in res and "segmentation" not in res:
        return "has neither 'bbox' nor 'segmentation'"
    bbox = res.get("bbox")
    if bbox is not None and not (
        isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)
    ):
        return f"'bbox' is {bbox!r}, not [x, y, w, h]"
    seg = res.get("segmentation")
    if seg is not None and not (
        (isinstance(seg, dict) and "size" in seg and "counts" in seg) or isinstance(seg, list)
    ):
        return "'segmentation' is neither an RLE dict nor a polygon list"
    return None


def validate_results(results: Any, source: str = "results") -> list[dict[str, Any]]:
    """Check that `results` is a COCO results list; ValueError naming `source` otherwise."""
    if not isinstance(results, list):
        raise ValueError(
            f"{source}: not a COCO results list (top level is a {type(results).__name__}; "
            "expected a list of {image_id, category_id, bbox|segmentation, score} dicts)"
        )
    for i, res in enumerate(results):
        problem = _check_result(res)
        if problem is not None:
            raise ValueError(f"{source}: not a COCO results list: entry {i} {problem}")
    return results


def load_results_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a COCO results JSON file, validating it (ValueError naming the file if bad)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return validate_results(data, source=str(path))
