"""`maskrcnn demo`: the main job out of the box, on a fresh machine.

Writes the synthetic shapes dataset, trains a small CPU model on it from scratch for a fixed
number of iterations (the same model on every machine; a time estimate is printed after the
first iterations), evaluates COCO box and mask AP on the validation images, and draws the
predicted masks on a few of them. Where the hardware computes in bfloat16 natively,
training runs under bfloat16 autocast (about 1.5x the speed, the same accuracy).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ModelConfig, preset
from ..structures import Detections
from .demo_settings import DEMO_ITERS
from .train_config import RunConfig, TrainConfig

__all__ = ["demo_run_config", "run_demo"]

NUM_OVERLAYS = 12
OVERLAY_SIZE = 384  # overlays of smaller images are enlarged by an integer factor


def demo_model_config(image_size: int) -> ModelConfig:
    """The small preset at the demo's image size, with anchors for its object sizes
    (shapes span 12%-45% of the image side), and narrower FPN and mask head (64 channels
    instead of 128: a third less time per iteration, the same accuracy on the shapes)."""
    cfg = preset("small")
    cfg.backbone.fpn_channels = 64
    cfg.roi_heads.mask_head_channels = 64
    cfg.input.min_size_train = (image_size,)
    cfg.input.min_size_test = image_size
    cfg.input.max_size = 2 * image_size
    cfg.anchors.sizes = (16, 32, 64, 128, 256)
    cfg.roi_heads.detections_per_image = 20  # at most 6 shapes per image
    # few objects per image: fewer proposals and RoIs than the preset (faster iterations)
    cfg.rpn.pre_nms_top_n_train, cfg.rpn.post_nms_top_n_train = 600, 300
    cfg.rpn.pre_nms_top_n_test, cfg.rpn.post_nms_top_n_test = 300, 100
    cfg.roi_heads.batch_size_per_image = 64
    return cfg


def native_bfloat16(device: str = "auto") -> bool:
    """Whether `device` has bfloat16 arithmetic in hardware (CPU: AVX512-BF16 or AMX, as
    oneDNN reports it); elsewhere bfloat16 autocast is emulated and slower than float32."""
    dev = _device(device)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return dev.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # not in this torch build
        return False


def demo_run_config(image_size: int, minutes: float = 0.0, iters: int = DEMO_ITERS,
                    device: str = "auto", amp: bool | None = None) -> RunConfig:
    """Settings that reach a convincing model in few iterations: large learning rate after a
    short warmup, cosine decay over `iters` iterations (or `minutes` of training, if given
    and reached first). amp: bfloat16 autocast; None = where native_bfloat16(device)."""
    train = TrainConfig(
        amp=native_bfloat16(device) if amp is None else amp,
        batch_size=4, num_workers=1, lr=0.04, warmup_iters=50, schedule="cosine",
        min_lr_factor=0.02, clip_grad_norm=10.0, max_iters=iters, minutes=minutes,
        log_period=20, checkpoint_period=0, checkpoint_minutes=0.0, keep_checkpoints=1,
        device=device,  # a demo starts afresh: one checkpoint at the end is enough
        fit_to_data=False,  # demo_model_config already fits the shapes
    )
    return RunConfig(model=demo_model_config(image_size), train=train)


def _dataset(root: Path, num_train: int, num_val: int, image_size: int) -> dict[str, Any]:
    """Write the shapes dataset unless the same one is already there."""
    from ..data.shapes import write_shapes_dataset

    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": 0}
    marker = root / "demo_params.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        print(f"using the shapes dataset in {root}")
        return {"train_json": str(root / "train.json"), "val_json": str(root / "val.json"),
                "images_dir": str(root / "images")}
    print(f"writing the shapes dataset ({num_train} + {num_val} images of {image_size} px) "
          f"to {root} ...", flush=True)
    info = write_shapes_dataset(root, **params)
    marker.write_text(json.dumps(params))
    return info


def run_demo(out: str, *, minutes: float = 0.0, iters: int = DEMO_ITERS, num_train: int = 300,
             num_val: int = 50, image_size: int = 192, device: str = "auto",
             amp: bool | None = None) -> dict[str, Any]:
    """Dataset -> training -> evaluation -> overlays under `out`. Returns the metrics."""
    from .inference import evaluate_model
    from .run_log import format_seconds
    from .train_data import load_eval_dataset
    from .trainer import DataPaths, train

    start = time.perf_counter()
    root = Path(out)
    info = _dataset(root / "data", num_train, num_val, image_size)
    run_dir = root / "train"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a demo starts from scratch every time
    run = demo_run_config(image_size, minutes, iters, device, amp)
    print(f"training {iters} iterations in "
          + ("bfloat16 autocast" if run.train.amp else "float32")
          + (f" (at most {minutes:g} minutes)" if minutes else "")
          + "; a time estimate follows after the first iterations", flush=True)
    data = DataPaths(info["train_json"], info["images_dir"])
    summary = train(run, data, str(run_dir))

    from ..io.weights import load_model

    model = load_model(run_dir / "model_final.pt", device=_device(device)).optimize_for_inference()
    print("evaluating on the validation images ...", flush=True)
    _, val_set = load_eval_dataset(info["val_json"], info["images_dir"])
    metrics, _ = evaluate_model(model, val_set, info["val_json"],
                                label_to_category_id=model.cfg.category_ids or None,
                                batch_size=4, out_dir=root / "eval")
    from .evaluator import format_metrics_table

    print(format_metrics_table(metrics))
    overlays = _overlays(model, val_set, root / "overlays")
    total = time.perf_counter() - start
    segm, bbox = metrics["segm"], metrics["bbox"]
    print(f"\ndemo done in {format_seconds(total)} ({summary['iteration']} training iterations)")
    print(f"mask AP {100 * segm['AP']:.1f}, mask AP50 {100 * segm['AP50']:.1f}, "
          f"box AP {100 * bbox['AP']:.1f}, box AP50 {100 * bbox['AP50']:.1f}")
    print(f"pictures: {overlays}/*.png; metrics: {root / 'eval' / 'metrics.json'}; "
          f"weights: {run_dir / 'model_final.pt'}")
    return metrics


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _overlays(model, val_set, folder: Path) -> Path:
    """Validation images with the predicted masks, enlarged to about 384 px for viewing."""
    from ..visualize import save_overlay

    folder.mkdir(parents=True, exist_ok=True)
    names = model.cfg.class_names or None
    device = next(model.parameters()).device
    for index in range(min(NUM_OVERLAYS, len(val_set))):
        image, _, meta = val_set[index]
        if image is None:
            continue
        dets = model.predict([image.to(device)])[0].to("cpu")
        scale = max(1, round(OVERLAY_SIZE / max(image.shape[-2:])))
        if scale > 1:
            image, dets = _enlarge(image, dets, scale)
        stem = Path(meta["file_name"]).stem
        save_overlay(image, dets, folder / f"{stem}.png", names, score_thresh=0.5)
    return folder


def _enlarge(image: torch.Tensor, dets: Detections, scale: int
             ) -> tuple[torch.Tensor, Detections]:
    """Image [3, H, W] and its detections scaled by an integer factor (masks: nearest)."""
    big = F.interpolate(image[None], scale_factor=scale, mode="bilinear",
                        align_corners=False)[0].clamp(0, 1)
    masks = None
    if dets.masks is not None:
        masks = dets.masks.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return big, Detections(dets.boxes * scale, dets.scores, dets.labels, masks)
