"""Time our Mask R-CNN against torchvision's maskrcnn_resnet50_fpn in one process.

Same seeded random weights (perturbed so that there are ~100 detections, as with real
weights on a busy image), same 800x1216 image, 2 threads, runs alternating between the
two models, median of --runs. Prints both medians, the ratio ours / torchvision, and
checks that the outputs agree.

    .venv/bin/python benchmarks/bench_model.py [--runs 5] [--size 800 1216]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216))
    args = parser.parse_args()
    torch.set_num_threads(2)

    images = smooth_random_images([tuple(args.size)])
    tv_model = perturbed_torchvision_maskrcnn(images)
    ours = our_copy(tv_model, torchvision_config()).eval()

    with torch.no_grad():
        tv_model(images), ours(images)  # warm-up
        tv_times, our_times = [], []
        for _ in range(args.runs):
            t, expected = timed(lambda: tv_model(images))
            tv_times.append(t)
            t, actual = timed(lambda: ours(images))
            our_times.append(t)

    exp, act = expected[0], actual[0]
    same_count = len(act) == len(exp["boxes"])
    max_box_diff = (act.boxes - exp["boxes"]).abs().max().item() if same_count else float("nan")
    tv_median, our_median = statistics.median(tv_times), statistics.median(our_times)
    print(f"image {args.size[0]}x{args.size[1]}, {len(exp['boxes'])} detections, "
          f"{args.runs} runs, {torch.get_num_threads()} threads")
    print(f"torchvision maskrcnn_resnet50_fpn: median {tv_median:.3f} s  "
          f"(runs: {', '.join(f'{t:.2f}' for t in tv_times)})")
    print(f"maskrcnn (ours):                   median {our_median:.3f} s  "
          f"(runs: {', '.join(f'{t:.2f}' for t in our_times)})")
    print(f"ratio ours / torchvision: {our_median / tv_median:.3f}")
    print(f"outputs: same detection count {same_count}, max box difference {max_box_diff:.2e} px")


if __name__ == "__main__":
    main()
