"""Time our vectorised mask pasting against torchvision's paste_masks_in_image.

100 masks of 28 x 28 into an 800 x 1216 image, boxes 20..400 px, 2 threads; the two run
alternately, median of several runs. Usage: python benchmarks/bench_mask_paste.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrcnn.ops.mask_paste import paste_masks, paste_masks_thresholded


def make_inputs(num: int, height: int, width: int, seed: int = 0):
    """Random masks [N, 28, 28] and boxes [N, 4] of 20..400 px inside the image."""
    gen = torch.Generator().manual_seed(seed)
    sizes = 20 + torch.rand(num, 2, generator=gen) * 380  # [N, 2] (w, h)
    limit = torch.tensor([width, height]) - sizes
    top_left = torch.rand(num, 2, generator=gen) * limit
    boxes = torch.cat((top_left, top_left + sizes), dim=1)
    masks = torch.rand(num, 28, 28, generator=gen)
    return masks, boxes


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = 800, 1216
    masks, boxes = make_inputs(args.num, height, width)

    cases = {
        "torchvision paste_masks_in_image": lambda: paste_masks_in_image(
            masks[:, None], boxes, (height, width)),
        "torchvision paste + (> 0.5)": lambda: paste_masks_in_image(
            masks[:, None], boxes, (height, width)) > 0.5,
        "ours paste_masks": lambda: paste_masks(masks, boxes, (height, width)),
        "ours paste_masks_thresholded": lambda: paste_masks_thresholded(
            masks, boxes, (height, width), 0.5),
    }
    ref = paste_masks_in_image(masks[:, None], boxes, (height, width))[:, 0]
    ours = paste_masks(masks, boxes, (height, width))
    max_diff = (ref - ours).abs().max().item()
    differing = int((ref != ours).sum())
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):  # alternate so drifting machine load hits all alike
        for name, fn in cases.items():
            times[name].append(timed(fn))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["torchvision paste_masks_in_image"]
    print(f"{args.num} masks 28x28 -> {height}x{width}, {args.threads} threads, "
          f"median of {args.runs} runs")
    print(f"{'':36s} {'median ms':>10s} {'min ms':>8s} {'speed-up':>9s}")
    for name, med in medians.items():
        print(f"{name:36s} {med * 1e3:10.1f} {min(times[name]) * 1e3:8.1f} {base / med:8.2f}x")
    print(f"ours vs torchvision: max |diff| {max_diff:.3g}, differing pixels {differing}")


if __name__ == "__main__":
    main()
