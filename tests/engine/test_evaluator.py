import contextlib
import copy
import io
import json
import warnings

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.engine.evaluator import (
    METRIC_NAMES,
    CocoEvaluator,
    coco_evaluate,
    format_metrics_table,
    pr_curves,
)
from maskrcnn.io.coco_results import write_results_json
from maskrcnn.structures import Detections
from maskrcnn.visualize import PR_PLOT_SIZE

# pycocotools' mask.decode warns under NumPy 2 (its own Cython array); not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}]
LABEL_TO_CAT = [0, 1, 3, 7]  # contiguous label -> category id
IMAGES = [(10, 160, 200), (20, 120, 180), (30, 200, 160)]  # id, height, width


def ellipse(h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_gt():
    """Three images, three categories, small / medium / large objects, RLE and polygons,
    one crowd region."""
    rng = np.random.default_rng(0)
    anns = []
    for image_id, h, w in IMAGES:
        for j in range(6):
            cat = CATEGORIES[(image_id // 10 + j) % 3]["id"]
            r = [7, 12, 25, 40, 52, 20][j] * (rng.uniform(0.8, 1.2) if j != 4 else 1.0)
            cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
            if j == 4:  # an axis-aligned rectangle as a polygon, large (area > 96**2)
                x1, y1, x2, y2 = cx - r, cy - r, cx + r, cy + r
                seg = [[x1, y1, x2, y1, x2, y2, x1, y2]]
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            else:
                m = ellipse(h, w, cy, cx, r, r * rng.uniform(0.6, 1.4))
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                seg = rle
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                "segmentation": seg, "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0,
            })
    crowd = np.zeros((160, 200), np.uint8, order="F")
    crowd[120:150, 10:60] = 1
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode("ascii")
    anns.append({"id": len(anns) + 1, "image_id": 10, "category_id": 1, "segmentation": rle,
                 "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                 "iscrowd": 1})
    images = [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, h, w in IMAGES]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


@pytest.fixture(scope="module")
def gt_dict():
    return make_gt()


@pytest.fixture()
def gt_path(tmp_path, gt_dict):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt_dict))
    return str(path)


def quiet_coco(gt):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
    return coco


def gt_detections(gt, perturb: bool, seed: int = 0):
    """Per image Detections from the gt (exact, or shifted / missed / relabelled + FPs)."""
    rng = np.random.default_rng(seed)
    coco = quiet_coco(gt)
    cat_to_label = {c: i for i, c in enumerate(LABEL_TO_CAT) if i > 0}
    dets_list = []
    for image_id, h, w in IMAGES:
        boxes, scores, labels, masks = [], [], [], []
        for ann in coco.imgToAnns[image_id]:
            if ann["iscrowd"] or (perturb and rng.random() < 0.15):
                continue
            m = coco.annToMask(ann).astype(bool)
            x, y, bw, bh = ann["bbox"]
            box = np.array([x, y, x + bw, y + bh])
            label = cat_to_label[ann["category_id"]]
            if perturb:
                dy, dx = rng.integers(-3, 4, size=2)
                m = np.roll(m, (dy, dx), axis=(0, 1))
                box = box + np.array([dx, dy, dx, dy]) + rng.normal(0, 1.0, 4)
                label = label if rng.random() > 0.1 else 1 + label % 3
            boxes.append(box), masks.append(m), labels.append(label)
            scores.append(rng.uniform(0.3, 1.0) if perturb else 1.0)
        for _ in range(3 if perturb else 0):  # false positives
            cy, cx, r = rng.uniform(20, h - 20), rng.uniform(20, w - 20), rng.uniform(5, 20)
            masks.append(ellipse(h, w, cy, cx, r, r))
            boxes.append(np.array([cx - r, cy - r, cx + r, cy + r]))
            labels.append(int(rng.integers(1, 4))), scores.append(rng.uniform(0.05, 0.6))
        dets_list.append(Detections(
            boxes=torch.tensor(np.array(boxes), dtype=torch.float32),
            scores=torch.tensor(scores, dtype=torch.float32),
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=torch.from_numpy(np.array(masks)),
        ))
    return dets_list


def collect(dets_list, image_ids=None):
    ev = CocoEvaluator(label_to_category_id=LABEL_TO_CAT)
    ev.update(dets_list, image_ids or [i for i, _, _ in IMAGES])
    return ev


def reference_cocoeval(gt, results, iou_type, cat_ids=None, max_dets=100):
    """pycocotools run directly; for segm the bbox is dropped so areas come from masks."""
    res = [dict(r) for r in copy.deepcopy(results)]
    if iou_type == "segm":
        for r in res:
            r.pop("bbox", None)
    coco_gt = quiet_coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(res)
        e = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if cat_ids is not None:
            e.params.catIds = cat_ids
        e.params.maxDets = [1, 10, max_dets]
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def test_matches_pycocotools(gt_dict, gt_path):
    results = collect(gt_detections(gt_dict, perturb=True)).results()
    ours = coco_evaluate(gt_path, results)
    for iou_type in ("bbox", "segm"):
        stats = reference_cocoeval(gt_dict, results, iou_type).stats
        assert [ours[iou_type][n] for n in METRIC_NAMES] == stats[:6].tolist()
        assert 0.2 < ours[iou_type]["AP"] < 0.95  # a real, non-trivial score
        for cat in CATEGORIES:  # per-class AP = a one-category pycocotools run
            ref = reference_cocoeval(gt_dict, results, iou_type, [cat["id"]]).stats
            assert ours["per_class"][iou_type][cat["name"]] == pytest.approx(ref[0], abs=1e-12)
    assert ours["bbox"] != ours["segm"]


def test_max_dets_other_than_100(gt_dict, gt_path):
    """pycocotools' summarize hard-wires stats[0] to maxDets=100 (-1 otherwise) and takes
    the others at maxDets[2] after sorting: our numbers are the mean precision at max_dets."""
    results = collect(gt_detections(gt_dict, perturb=True)).results()
    ours = coco_evaluate(gt_path, results, max_dets=1)
    full = coco_evaluate(gt_path, results)
    for iou_type in ("bbox", "segm"):
        e = reference_cocoeval(gt_dict, results, iou_type, max_dets=1)
        assert e.params.maxDets == [1, 1, 10]  # COCOeval.evaluate sorts maxDets
        p = e.eval["precision"][:, :, :, 0, 0]  # [T, R, K] at maxDets 1
        assert ours[iou_type]["AP50"] == np.mean(p[0][p[0] > -1])
        assert ours[iou_type]["AP75"] == np.mean(p[5][p[5] > -1])
        assert ours[iou_type]["AP"] == np.mean(p[p > -1])
        assert 0 < ours[iou_type]["AP"] < full[iou_type]["AP"]


def test_segm_area_ranges_use_mask_area():
    """A false positive whose mask is small (< 32**2) but whose box is medium must lower
    mask APs, not mask APm (detectron2's convention: results lose their bbox for segm)."""
    h, w = 100, 140
    small, medium, fp = ellipse(h, w, 20, 20, 10, 10), np.zeros((h, w), bool), ellipse(
        h, w, 70, 30, 18, 18)
    medium[30:80, 70:120] = True
    assert mask_utils.area(encode(fp)) < 32**2 < 36 * 36  # box of fp is 36 x 36
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": encode(m),
             "area": float(m.sum()), "bbox": mask_utils.toBbox(encode(m)).tolist(), "iscrowd": 0}
            for i, m in enumerate([small, medium])]
    gt = {"images": [{"id": 1, "height": h, "width": w}], "annotations": anns,
          "categories": [{"id": 1, "name": "thing"}]}
    dets = Detections(
        boxes=torch.tensor([[10.0, 10, 31, 31], [70, 30, 120, 80], [12, 52, 48, 88]]),
        scores=torch.tensor([0.9, 0.8, 0.95]), labels=torch.tensor([1, 1, 1]),
        masks=torch.from_numpy(np.stack([small, medium, fp])),
    )
    metrics = coco_evaluate(gt, collect_one(dets))
    assert metrics["segm"]["APm"] == pytest.approx(1.0) and metrics["segm"]["APs"] < 0.99
    assert metrics["bbox"]["APm"] < 0.99  # box AP: the box area (1296) makes it medium


def encode(m):
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def collect_one(dets):
    ev = CocoEvaluator()
    ev.update([dets], [1])
    return ev.results()


def test_perfect_detections_give_ap_one(gt_dict, gt_path):
    metrics = collect(gt_detections(gt_dict, perturb=False)).evaluate(gt_path)
    for iou_type in ("bbox", "segm"):
        for name in METRIC_NAMES:
            assert metrics[iou_type][name] == pytest.approx(1.0), (iou_type, name)
        assert metrics["per_class"][iou_type] == pytest.approx({"cat": 1, "dog": 1, "bird": 1})


def test_empty_results_give_zeros(gt_dict, gt_path, tmp_path):
    metrics = coco_evaluate(gt_path, [], out_dir=tmp_path / "out")
    assert CocoEvaluator().evaluate(gt_dict) == metrics  # nothing accumulated
    for iou_type in ("bbox", "segm"):
        assert all(v == 0.0 for v in metrics[iou_type].values())
        assert all(v == 0.0 for v in metrics["per_class"][iou_type].values())
    assert (tmp_path / "out" / "pr_segm.png").exists()


def test_results_on_a_subset_of_images_count_misses(gt_dict, gt_path):
    results = collect(gt_detections(gt_dict, perturb=True)).results()
    subset = [r for r in results if r["image_id"] == 20]
    full = coco_evaluate(gt_path, results)
    part = coco_evaluate(gt_path, subset)
    for iou_type in ("bbox", "segm"):
        stats = reference_cocoeval(gt_dict, subset, iou_type).stats  # all gt images
        assert [part[iou_type][n] for n in METRIC_NAMES] == stats[:6].tolist()
        assert part[iou_type]["AP"] < full[iou_type]["AP"]


def test_unknown_image_id_raises(gt_path):
    bad = [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match="999"):
        coco_evaluate(gt_path, bad, iou_types=("bbox",))


def test_inputs_as_file_dict_and_coco_and_no_mutation(gt_dict, gt_path, tmp_path):
    results = collect(gt_detections(gt_dict, perturb=True, seed=1)).results()
    snapshot = copy.deepcopy(results)
    res_path = tmp_path / "results.json"
    write_results_json(results, res_path)
    a = coco_evaluate(gt_path, results)
    assert results == snapshot  # pycocotools' loadRes mutates its input: we pass copies
    assert coco_evaluate(gt_dict, str(res_path)) == a
    assert coco_evaluate(quiet_coco(gt_dict), res_path) == a


def test_box_only_results_skip_segm(gt_dict, gt_path):
    dets_list = gt_detections(gt_dict, perturb=True)
    for d in dets_list:
        d.masks = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = collect(dets_list).evaluate(gt_path)
    assert "segm" not in metrics and "segm" not in metrics["per_class"]
    assert metrics["bbox"]["AP"] > 0.2
    assert any("skipping segm" in str(w.message) for w in caught)


def test_out_dir_writes_metrics_and_pr_plots(gt_dict, gt_path, tmp_path):
    results = collect(gt_detections(gt_dict, perturb=True)).results()
    out = tmp_path / "eval"
    metrics = coco_evaluate(gt_path, results, out_dir=out)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for iou_type in ("bbox", "segm"):
        with Image.open(out / f"pr_{iou_type}.png") as img:
            assert img.format == "PNG" and img.size == PR_PLOT_SIZE
            pixels = np.asarray(img.convert("RGB"))
        assert (pixels.std(axis=2) > 40).sum() > 500  # coloured curves were drawn


def test_pr_curves_average_to_ap(gt_dict):
    results = collect(gt_detections(gt_dict, perturb=True)).results()
    e = reference_cocoeval(gt_dict, results, "segm")
    recall, curves = pr_curves(e)
    assert recall.shape == (101,) and all(c.shape == (101,) for c in curves.values())
    assert curves["IoU=0.50:0.95"].mean() == pytest.approx(e.stats[0], abs=1e-12)
    assert curves["IoU=0.50"].mean() == pytest.approx(e.stats[1], abs=1e-12)
    assert curves["IoU=0.75"].mean() == pytest.approx(e.stats[2], abs=1e-12)
    assert np.all(np.diff(curves["IoU=0.50"]) <= 1e-12)  # interpolated: non-increasing


def test_update_replaces_and_merge_dedups(gt_dict, gt_path):
    dets_list = gt_detections(gt_dict, perturb=True)
    ids = [i for i, _, _ in IMAGES]
    rank0, rank1 = CocoEvaluator(LABEL_TO_CAT), CocoEvaluator(LABEL_TO_CAT)
    rank0.update(dets_list[:2], ids[:2])
    rank1.update(dets_list[1:], ids[1:])  # image 20 on both ranks (sampler padding)
    rank1.update([Detections.empty()], [40])  # an image without detections adds nothing
    merged = CocoEvaluator.merge([rank0.results(), rank1.results()])
    single = collect(dets_list).results()
    assert sorted(merged, key=json.dumps) == sorted(single, key=json.dumps)
    assert rank0.evaluate(gt_path, results=merged) == coco_evaluate(gt_path, single)
    again = collect(dets_list)
    again.update([dets_list[0]], [20])  # image 20 replaced by image 10's detections
    n20 = sum(r["image_id"] == 20 for r in again.results())
    assert n20 == len(dets_list[0])


def test_format_metrics_table():
    metrics = {
        "bbox": dict(zip(METRIC_NAMES, [0.379, 0.5912, 0.41, 0.2, 0.4, -1.0])),
        "segm": dict(zip(METRIC_NAMES, [0.346, 0.56, 0.36, 0.15, 0.37, 0.5])),
        "per_class": {"bbox": {"person": 0.5, "traffic light": 0.25},
                      "segm": {"person": 0.45, "traffic light": -1.0}},
    }
    text = format_metrics_table(metrics)
    lines = text.splitlines()
    header = next(line for line in lines if "AP50" in line)
    assert [c.strip() for c in header.strip("|").split("|")] == ["type (AP in %)", *METRIC_NAMES]
    bbox = next(line for line in lines if line.startswith("| bbox"))
    assert [c.strip() for c in bbox.strip("|").split("|")][1:] == [
        "37.9", "59.1", "41.0", "20.0", "40.0", "-"]
    light = next(line for line in lines if "traffic light" in line)
    assert [c.strip() for c in light.strip("|").split("|")] == ["traffic light", "25.0", "-"]
    assert "per-class" in text
