"""Latency of every backend on the same weights and images, in one process, alternating:
torchvision eager (R50-FPN only), ours exact, ours optimize_for_inference, our exported
model in ONNX Runtime and in OpenVINO (float32).

Models: the R50-FPN at 800 x 1216 (torchvision's maskrcnn_resnet50_fpn with the perturbed
seeded weights of bench_model.py, ~100 detections) and the small preset at its test size
(384 x 512, random weights spread as in the deploy tests). Prints medians of --runs for
batch 1, the ratio to the first row, and the share of detections matched (same label,
IoU > 0.99) against ours exact.

    .venv/bin/python benchmarks/bench_deploy.py [--runs 5] [--models r50 small]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from maskrcnn.config import preset
from maskrcnn.deploy import load_exported
from maskrcnn.deploy.exporter import export
from maskrcnn.modeling import build_model
from maskrcnn.ops.boxes import box_iou
from maskrcnn.testing import (
    our_copy,
    perturbed_torchvision_maskrcnn,
    smooth_random_images,
    spread_scores,
    torchvision_config,
)


def matched(ours, reference, threshold: float = 0.99) -> float:
    """Share of `ours` detections with a same-label twin of IoU > threshold in `reference`."""
    if len(ours) == 0 or len(reference) == 0:
        return float(len(ours) == len(reference))
    iou = box_iou(ours.boxes, reference.boxes)
    iou[ours.labels[:, None] != reference.labels[None, :]] = 0
    return (iou.max(dim=1).values > threshold).float().mean().item()


def contenders(name: str, folder: Path, threads: int):
    """(images, {row name: callable returning Detections of the first image})."""
    if name == "r50":
        images = smooth_random_images([(800, 1216)])
        tv_model = perturbed_torchvision_maskrcnn(images)
        exact = our_copy(tv_model, torchvision_config()).eval()
        rows = {"torchvision eager": lambda: tv_model(images)[0]}
    else:
        images = smooth_random_images([(384, 512)])
        torch.manual_seed(0)
        exact = spread_scores(build_model(preset("small")).eval())
        rows = {}
    fast = build_model(exact.cfg)
    fast.load_state_dict(exact.state_dict())
    fast.optimize_for_inference()
    start = time.perf_counter()
    onnx_path = export(exact, folder / f"{name}.onnx")[0]
    xml_path = export(exact, folder / f"{name}.xml", "openvino")[0]
    print(f"{name}: exported to ONNX and OpenVINO in {time.perf_counter() - start:.1f} s")
    ort_model = load_exported(onnx_path, threads=threads)
    ov_model = load_exported(xml_path, threads=threads)
    rows.update({
        "ours exact": lambda: exact.predict(images)[0],
        "ours optimize_for_inference": lambda: fast.predict(images)[0],
        "ours in ONNX Runtime": lambda: ort_model.predict(images)[0],
        "ours in OpenVINO": lambda: ov_model.predict(images)[0],
    })
    return images, rows


def run(name: str, runs: int, folder: Path, threads: int) -> None:
    images, rows = contenders(name, folder, threads)
    times = {row: [] for row in rows}
    outputs = {}
    with torch.no_grad():
        for fn in rows.values():
            fn()  # warm-up
        for _ in range(runs):
            for row, fn in rows.items():
                start = time.perf_counter()
                outputs[row] = fn()
                times[row].append(time.perf_counter() - start)
    first = statistics.median(next(iter(times.values())))
    reference = outputs["ours exact"]
    height, width = images[0].shape[1:]
    print(f"{name} at {height}x{width}, batch 1, {len(reference)} detections, {runs} runs "
          f"alternating, {threads} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{'backend':30s} {'median s':>9s} {'ratio':>6s} {'matched':>8s}  runs")
    for row, runs_s in times.items():
        out = outputs[row]
        share = 1.0 if isinstance(out, dict) else matched(out, reference)
        median = statistics.median(runs_s)
        print(f"{row:30s} {median:9.3f} {median / first:6.3f} {share:8.1%}  "
              + ", ".join(f"{t:.2f}" for t in runs_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["r50", "small"],
                        choices=["r50", "small"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            run(name, args.runs, Path(folder), args.threads)
    print("ratio = median / the first row's median; matched = share of detections with a "
          "same-label twin of IoU > 0.99 in ours exact (torchvision's row: not compared)")


if __name__ == "__main__":
    main()
