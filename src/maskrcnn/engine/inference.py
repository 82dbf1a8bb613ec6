"""Running a model over a dataset: COCO results, validation loss, COCO AP; on one process
or on every rank of a distributed run (each rank takes its shard, results are gathered)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data.loader import build_loader
from . import distributed as dist
from .evaluator import CocoEvaluator, coco_evaluate
from .train_data import SafeDataset, warn

__all__ = ["evaluate_model", "run_inference"]


def run_inference(
    model: nn.Module,
    dataset: SafeDataset,
    *,
    label_to_category_id: Any = None,
    batch_size: int = 2,
    num_workers: int = 0,
    with_loss: bool = False,
    progress: Callable[[int, int], None] | None = None,
    score_thresh: float | None = None,
) -> tuple[list[dict], dict[str, float], list[str]]:
    """Predict on this rank's share of `dataset` (all of it on one process).

    model: a MaskRCNN or an exported model (maskrcnn.deploy; no validation loss then).
    Returns (COCO results of every rank, merged; mean validation losses over all ranks'
    images, empty unless with_loss; files that could not be read). The model is put in
    eval mode; losses come from `compute_losses` in eval mode. Every rank must call this.
    progress(batches done, batches) is called after each batch.
    """
    device = getattr(model, "device", None) or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = build_loader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, seed=0,
        distributed=dist.is_distributed(), rank=dist.get_rank(),
        world_size=dist.get_world_size(),
    )
    evaluator = CocoEvaluator(label_to_category_id)
    loss_sums: dict[str, float] = {}
    seen, failed = 0, []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with torch.no_grad():
            for step, (images, targets, metas) in enumerate(loader):
                ok = [i for i, image in enumerate(images) if image is not None]
                failed += [m["error"] for m in metas if "error" in m]
                if ok:
                    batch = [images[i].to(device) for i in ok]
                    dets = model.predict(batch, score_thresh=score_thresh)
                    image_ids = [metas[i]["image_id"] for i in ok]
                    evaluator.update([d.to("cpu") for d in dets], image_ids)
                    if with_loss:
                        losses = model.compute_losses(batch, [targets[i].to(device) for i in ok])
                        for name, value in losses.items():
                            loss_sums[name] = loss_sums.get(name, 0.0) + float(value) * len(ok)
                    seen += len(ok)
                if progress is not None:
                    progress(step + 1, len(loader))
    model.train(was_training)
    results = CocoEvaluator.merge(dist.all_gather_object(evaluator.results()))
    failed = sorted({f for per_rank in dist.all_gather_object(failed) for f in per_rank})
    mean_losses = _mean_losses(loss_sums, seen) if with_loss else {}
    return results, mean_losses, failed


def _mean_losses(sums: dict[str, float], count: int) -> dict[str, float]:
    """Per-image mean of each loss over the images of all ranks."""
    total: dict[str, float] = {}
    images = 0
    for rank_sums, rank_count in dist.all_gather_object((sums, count)):
        images += rank_count
        for name, value in rank_sums.items():
            total[name] = total.get(name, 0.0) + value
    out = {name: value / max(images, 1) for name, value in sorted(total.items())}
    if out:
        out["loss"] = sum(out.values())
    return out


def _record_precision(path: str, precision: str) -> None:
    """Add "precision" to the metrics.json coco_evaluate wrote (results stay traceable)."""
    import json

    from ..io.coco_results import write_json_atomic

    with open(path) as f:
        saved = json.load(f)
    saved["precision"] = precision
    write_json_atomic(saved, path)


def evaluate_model(
    model: nn.Module,
    dataset: SafeDataset,
    gt_json: str | os.PathLike | dict,
    *,
    label_to_category_id: Any = None,
    batch_size: int = 2,
    num_workers: int = 0,
    with_loss: bool = False,
    out_dir: str | os.PathLike | None = None,
    max_dets: int = 100,
    progress: Callable[[int, int], None] | None = None,
    score_thresh: float | None = None,
) -> tuple[dict[str, Any], list[dict]]:
    """COCO AP (bbox and segm) of `model` on `dataset` (+ validation loss if with_loss).

    Returns (metrics, results) on every rank: metrics as coco_evaluate returns them plus
    "loss" (dict, when with_loss), "seconds", "num_unreadable" and, for a model with a
    `precision` (maskrcnn.load_model's models: "fp32" or "bf16"), "precision". With
    out_dir, rank 0 also writes metrics.json (with the precision) and the PR plots there.
    progress and score_thresh: as in run_inference.
    """
    start = time.perf_counter()
    results, losses, failed = run_inference(
        model, dataset, label_to_category_id=label_to_category_id, batch_size=batch_size,
        num_workers=num_workers, with_loss=with_loss, progress=progress,
        score_thresh=score_thresh,
    )
    metrics: dict[str, Any] = {}
    if dist.is_main_process():
        for reason in failed[:5]:
            warn(f"evaluation: {reason} (its objects count as misses)")
        if len(failed) > 5:
            warn(f"evaluation: {len(failed)} images could not be read in all")
        iou_types = ("bbox", "segm") if any("segmentation" in r for r in results) or not results \
            else ("bbox",)
        metrics = coco_evaluate(gt_json, results, iou_types=iou_types, out_dir=out_dir,
                                max_dets=max_dets)
        precision = getattr(model, "precision", None)
        if precision is not None:
            metrics["precision"] = precision
            if out_dir is not None:
                _record_precision(os.path.join(out_dir, "metrics.json"), precision)
        if with_loss:
            metrics["loss"] = losses
        metrics["seconds"] = time.perf_counter() - start
        metrics["num_unreadable"] = len(failed)
    metrics = dist.broadcast_object(metrics)
    return metrics, results
