"""Time our Mask R-CNN against torchvision's maskrcnn_resnet50_fpn in one process.

Same seeded random weights (perturbed so that there are ~100 detections, as with real
weights on a busy image), same 800x1216 image, 2 threads, runs alternating between the
two models, median of --runs. Prints both medians, the ratio ours / torchvision, and
checks that the outputs agree.

    .venv/bin/python benchmarks/bench_model.py [--runs 5] [--size 800 1216]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from maskrcnn.testing import (
    our_copy,
    perturbed_torchvision_maskrcnn,
    smooth_random_images,
    torchvision_config,
)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def matched_fraction(act, exp) -> float:
    """Share of our detections with a same-label twin of IoU > 0.99 in torchvision's."""
    from torchvision.ops import box_iou

    if len(act) == 0 or len(exp["boxes"]) == 0:
        return float(len(act) == len(exp["boxes"]))
    iou = box_iou(act.boxes, exp["boxes"])
    iou[act.labels[:, None] != exp["labels"][None, :]] = 0
    return (iou.max(dim=1).values > 0.99).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216))
    args = parser.parse_args()
    torch.set_num_threads(2)

    images = smooth_random_images([tuple(args.size)])
    tv_model = perturbed_torchvision_maskrcnn(images)
    models = {
        "torchvision maskrcnn_resnet50_fpn": lambda: tv_model(images),
        "maskrcnn (ours), exact": None,
        "maskrcnn (ours), optimize_for_inference": None,
    }
    exact = our_copy(tv_model, torchvision_config()).eval()
    fast = our_copy(tv_model, torchvision_config()).optimize_for_inference()
    models["maskrcnn (ours), exact"] = lambda: exact(images)
    models["maskrcnn (ours), optimize_for_inference"] = lambda: fast(images)

    times: dict[str, list[float]] = {name: [] for name in models}
    outputs = {}
    with torch.no_grad():
        for fn in models.values():
            fn()  # warm-up
        for _ in range(args.runs):  # alternating
            for name, fn in models.items():
                t, outputs[name] = timed(fn)
                times[name].append(t)

    expected = outputs["torchvision maskrcnn_resnet50_fpn"][0]
    reference = statistics.median(times["torchvision maskrcnn_resnet50_fpn"])
    print(f"image {args.size[0]}x{args.size[1]}, {len(expected['boxes'])} detections, "
          f"{args.runs} runs alternating, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':42s} {'median s':>9s} {'ratio':>6s} {'matched':>8s}  runs")
    for name, runs in times.items():
        median = statistics.median(runs)
        out = outputs[name][0]
        matched = 1.0 if name.startswith("torchvision") else matched_fraction(out, expected)
        print(f"{name:42s} {median:9.3f} {median / reference:6.3f} {matched:8.1%}  "
              + ", ".join(f"{t:.2f}" for t in runs))
    print("ratio = median / torchvision's median; matched = share of detections with a "
          "same-label twin of IoU > 0.99 in torchvision's output")


if __name__ == "__main__":
    main()
