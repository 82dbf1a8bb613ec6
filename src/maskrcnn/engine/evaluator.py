"""COCO evaluation (official pycocotools COCOeval) of box and mask detections.

Metrics are on pycocotools' 0-1 scale; -1 is kept where pycocotools gives -1 (no ground
truth in that area range / class). `format_metrics_table` prints them in percent.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.io.coco_results import (
    detections_to_coco,
    load_results_json,
    validate_results,
    write_json_atomic,
)
from maskrcnn.structures import Detections

__all__ = [
    "METRIC_NAMES", "CocoEvaluator", "coco_evaluate", "format_metrics_table", "pr_curves",
]

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # = COCOeval.stats[:6]
IOU_TYPES = ("bbox", "segm")


def _quiet() -> contextlib.AbstractContextManager:
    """Capture pycocotools' prints (they go to stdout)."""
    return contextlib.redirect_stdout(io.StringIO())


def _load_gt(gt_json: str | os.PathLike | dict | COCO) -> COCO:
    """A COCO object (a given one is used as is: COCOeval converts its polygons to RLE)."""
    if isinstance(gt_json, COCO):
        return gt_json
    with _quiet():
        if isinstance(gt_json, dict):
            coco = COCO()
            coco.dataset = copy.deepcopy(gt_json)  # COCOeval rewrites gt segmentations
            coco.createIndex()
            return coco
        return COCO(str(gt_json))


def _empty_results_coco(coco_gt: COCO) -> COCO:
    """A results COCO with no detections (pycocotools' loadRes fails on an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with _quiet():
        coco_dt.createIndex()
    return coco_dt


def _results_for(results: list[dict], iou_type: str) -> list[dict] | None:
    """Copies of the results prepared for one IoU type, or None if they cannot serve it.

    segm: the "bbox" key is dropped so that pycocotools takes an instance's area from its
    mask, not its box (the small/medium/large split then uses mask area, as detectron2 does).
    """
    if iou_type == "bbox":
        if all("bbox" in r for r in results):
            return [dict(r) for r in results]
        if all("segmentation" in r for r in results):  # boxes derived from the masks
            return [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        raise ValueError("bbox evaluation: results must all have a bbox or all a segmentation")
    have_seg = sum("segmentation" in r for r in results)
    if results and have_seg == 0:
        return None
    if have_seg != len(results):
        raise ValueError(f"segm evaluation: only {have_seg} of {len(results)} results have masks")
    return [{k: v for k, v in r.items() if k != "bbox"} for r in results]


def _max_dets_index(coco_eval: COCOeval, max_dets: int) -> int:
    """Index of max_dets in params.maxDets (COCOeval.evaluate sorts that list)."""
    return list(coco_eval.params.maxDets).index(max_dets)


def _per_class_ap(coco_eval: COCOeval, coco_gt: COCO, max_dets: int) -> dict[str, float]:
    """AP@[.50:.95] per category (area all, max_dets), -1 where no ground truth."""
    m = _max_dets_index(coco_eval, max_dets)
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    names: dict[str, float] = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, m]
        p = p[p > -1]
        name = str(coco_gt.cats[cat_id].get("name", cat_id))
        if name in names:
            name = f"{name} ({cat_id})"
        names[name] = float(np.mean(p)) if p.size else -1.0
    return names


def pr_curves(
    coco_eval: COCOeval, max_dets: int = 100
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class-averaged precision at each recall threshold (area all, max_dets) of an
    accumulated COCOeval.

    Returns recall [R] and {"IoU=0.50": [R], "IoU=0.75": [R], "IoU=0.50:0.95": [R]};
    entries are -1 where no class has ground truth.
    """
    params = coco_eval.params
    m = _max_dets_index(coco_eval, max_dets)
    precision = coco_eval.eval["precision"][:, :, :, 0, m]  # [T, R, K]

    def mean_valid(p: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        valid = p > -1
        total = np.where(valid, p, 0.0).sum(axis=axes)
        count = valid.sum(axis=axes)
        return np.where(count > 0, total / np.maximum(count, 1), -1.0)

    curves = {}
    for thr in (0.5, 0.75):
        t = int(np.argmin(np.abs(params.iouThrs - thr)))
        curves[f"IoU={thr:.2f}"] = mean_valid(precision[t], axes=(1,))  # [R, K] -> [R]
    curves["IoU=0.50:0.95"] = mean_valid(precision.transpose(1, 0, 2), axes=(1, 2))  # [R]
    return np.asarray(params.recThrs), curves


def _run_cocoeval(coco_gt: COCO, results: list[dict], iou_type: str, max_dets: int) -> COCOeval:
    with _quiet():
        coco_dt = coco_gt.loadRes(results) if results else _empty_results_coco(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        coco_eval.params.imgIds = sorted(coco_gt.getImgIds())  # all gt images
        coco_eval.params.maxDets = [1, 10, max_dets]
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def _summary_aps(coco_eval: COCOeval, max_dets: int) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl at max_dets, as COCOeval.summarize computes stats[:6]
    (its stats[0] is hard-wired to maxDets=100 and gives -1 for other values)."""
    params = coco_eval.params
    m = _max_dets_index(coco_eval, max_dets)
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    area = {name: i for i, name in enumerate(params.areaRngLbl)}
    picks = {  # name: (IoU threshold or None for all, area label)
        "AP": (None, "all"), "AP50": (0.5, "all"), "AP75": (0.75, "all"),
        "APs": (None, "small"), "APm": (None, "medium"), "APl": (None, "large"),
    }
    out = {}
    for name, (iou, area_label) in picks.items():
        p = precision[:, :, :, area[area_label], m]  # [T, R, K]
        if iou is not None:
            p = p[np.isclose(params.iouThrs, iou)]
        valid = p[p > -1]
        out[name] = float(np.mean(valid)) if valid.size else -1.0
    return out


def coco_evaluate(
    gt_json: str | os.PathLike | dict | COCO,
    results: list[dict] | str | os.PathLike,
    iou_types: Sequence[str] = IOU_TYPES,
    out_dir: str | os.PathLike | None = None,
    max_dets: int = 100,
) -> dict[str, Any]:
    """Official COCO AP of `results` against the ground truth `gt_json`.

    gt_json: path of a COCO annotation file, its loaded dict, or a COCO object.
    results: a COCO results list or the path of a results JSON file.
    Evaluation runs on ALL images of the ground truth: images without any detection count
    as misses (their objects are false negatives). Results naming an image id that is not
    in the ground truth raise ValueError. Empty results give AP 0 (-1 where pycocotools
    reports no ground truth). For "segm", instance areas (small/medium/large) come from the
    masks; results without any mask skip "segm" with a warning.
    Returns {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...},
    "per_class": {"bbox": {name: AP}, ...}}, all on the 0-1 scale. With `out_dir`, also
    writes out_dir/metrics.json and out_dir/pr_{iou_type}.png.
    """
    coco_gt = _load_gt(gt_json)
    if isinstance(results, (str, os.PathLike)):
        results = load_results_json(results)
    results = validate_results(results)
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(
            f"{len(unknown)} result image ids are not in the ground truth, "
            f"e.g. {sorted(unknown)[:5]}"
        )
    metrics: dict[str, Any] = {"per_class": {}}
    evals: dict[str, COCOeval] = {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou type {iou_type!r}, expected one of {IOU_TYPES}")
        prepared = _results_for(results, iou_type)
        if prepared is None:
            warnings.warn(f"no result has a mask: skipping {iou_type} evaluation", stacklevel=2)
            continue
        coco_eval = _run_cocoeval(coco_gt, prepared, iou_type, max_dets)
        metrics[iou_type] = _summary_aps(coco_eval, max_dets)
        metrics["per_class"][iou_type] = _per_class_ap(coco_eval, coco_gt, max_dets)
        evals[iou_type] = coco_eval
    if out_dir is not None:
        _write_outputs(Path(out_dir), metrics, evals, max_dets)
    return metrics


def _write_outputs(
    out_dir: Path, metrics: dict[str, Any], evals: Mapping[str, COCOeval], max_dets: int
) -> None:
    from maskrcnn.visualize import draw_pr_plot  # matplotlib drawing, only needed here

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(metrics, out_dir / "metrics.json")
    for iou_type, coco_eval in evals.items():
        recall, curves = pr_curves(coco_eval, max_dets)
        ap = metrics[iou_type]
        labels = {
            "IoU=0.50": f"IoU=0.50 (AP50 {100 * ap['AP50']:.1f})",
            "IoU=0.75": f"IoU=0.75 (AP75 {100 * ap['AP75']:.1f})",
            "IoU=0.50:0.95": f"mean IoU=0.50:0.95 (AP {100 * ap['AP']:.1f})",
        }
        named = {labels[k]: v for k, v in curves.items()}
        title = f"{iou_type}: precision-recall, area=all, maxDets={max_dets}, mean over classes"
        draw_pr_plot(recall, named, title=title).save(out_dir / f"pr_{iou_type}.png")


def _pct(v: float) -> str:
    return "-" if v < 0 or v != v else f"{100 * v:.1f}"


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """Metrics (as from coco_evaluate) as text tables in percent with one decimal.

    One row per IoU type with AP, AP50, AP75, APs, APm, APl ("-" for pycocotools' -1),
    then one row per class with its AP for each IoU type.
    """
    types = [t for t in IOU_TYPES if t in metrics]
    header = ["type (AP in %)", *METRIC_NAMES]
    rows = [[t, *(_pct(metrics[t][n]) for n in METRIC_NAMES)] for t in types]
    lines = _table(header, rows)
    per_class = metrics.get("per_class", {})
    class_types = [t for t in IOU_TYPES if t in per_class]
    if class_types:
        names: list[str] = []
        for t in class_types:
            names += [n for n in per_class[t] if n not in names]
        header = ["category", *(f"{t} AP" for t in class_types)]
        rows = [[n, *(_pct(per_class[t].get(n, -1.0)) for t in class_types)] for n in names]
        lines += ["", "per-class AP (in %; metrics.json holds fractions of 1):",
                  *_table(header, rows)]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        first = str(row[0]).ljust(widths[0])
        rest = (str(c).rjust(w) for c, w in zip(row[1:], widths[1:]))
        return "| " + " | ".join([first, *rest]) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [fmt(header), rule, *(fmt(r) for r in rows)]


class CocoEvaluator:
    """Accumulates per-image detections as COCO results, then runs coco_evaluate.

    label_to_category_id: the dataset's map from contiguous labels to category ids (a
    sequence indexed by label, a mapping, or None for identity). In a distributed run each
    rank calls update on its images; the caller gathers every rank's `results()` and passes
    them through `CocoEvaluator.merge` (or `evaluate(..., results=...)`) on one rank.
    """

    def __init__(
        self,
        label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
        iou_types: Sequence[str] = IOU_TYPES,
        max_dets: int = 100,
    ) -> None:
        self.label_to_category_id = label_to_category_id
        self.iou_types = tuple(iou_types)
        self.max_dets = max_dets
        self._per_image: dict[int, list[dict]] = {}

    def reset(self) -> None:
        self._per_image = {}

    def update(self, detections_list: Sequence[Detections], image_ids: Sequence[int]) -> None:
        """Add one batch: detections_list[i] (original image pixels) of image image_ids[i].

        An image seen again replaces its earlier results.
        """
        if len(detections_list) != len(image_ids):
            raise ValueError(f"{len(detections_list)} detections for {len(image_ids)} image ids")
        for dets, image_id in zip(detections_list, image_ids):
            image_id = int(image_id)
            self._per_image[image_id] = detections_to_coco(
                dets, image_id, self.label_to_category_id
            )

    @property
    def image_ids(self) -> list[int]:
        return list(self._per_image)

    def results(self) -> list[dict]:
        """All accumulated COCO results, in the order images were first added."""
        return [r for per_image in self._per_image.values() for r in per_image]

    @staticmethod
    def merge(list_of_results_lists: Iterable[list[dict]]) -> list[dict]:
        """Concatenate results lists (e.g. one per rank), keeping each image id from the
        first list that has it (distributed samplers repeat images to even out ranks)."""
        merged: list[dict] = []
        seen: set[int] = set()
        for results in list_of_results_lists:
            ids = {r["image_id"] for r in results}
            merged += [r for r in results if r["image_id"] not in seen]
            seen |= ids
        return merged

    def evaluate(
        self,
        gt_json: str | os.PathLike | dict | COCO,
        out_dir: str | os.PathLike | None = None,
        results: list[dict] | None = None,
    ) -> dict[str, Any]:
        """coco_evaluate on the accumulated results (or on `results`, e.g. merged ones)."""
        return coco_evaluate(
            gt_json,
            self.results() if results is None else results,
            iou_types=self.iou_types,
            out_dir=out_dir,
            max_dets=self.max_dets,
        )
