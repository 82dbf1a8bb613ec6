"""Time our RoIAlign against torchvision.ops.roi_align in one process, on CPU, 2 threads.

    .venv/bin/python benchmarks/bench_roi_align.py [--runs 7]

Cases (the model's real shapes, R50-FPN at 800x1216):
  a  1000 RoIs, 256 channels, 7x7, sampling 2, one [1, 256, 200, 304] map (scale 1/4)
  a4 the same 1000 RoIs over P2..P5 (MultiLevelRoIAlign vs torchvision MultiScaleRoIAlign)
  b  100 RoIs at 14x14, sampling 2, on the [1, 256, 200, 304] map
  b4 the same 100 RoIs over P2..P5
plus the detectron2 setting (aligned, adaptive sampling) on the 4-level case, ours on a
channels_last copy of the map (what a channels_last model gives it), and the mask head's
training targets:
  m  128 RoIs cropped to 28x28 (adaptive sampling) from 20 one-channel 800x1216 uint8 masks,
     maskrcnn.ops.roi_align_masks vs torchvision's roi_align on the masks as float (what
     torchvision's project_masks_on_boxes does; forward only). RoIs are random
boxes of 16..400 px (width and height independent) inside the 800x1216 image. Runs of ours
and torchvision alternate (order swapped every run); the table shows medians in ms and the
ratio ours / torchvision (below 1: we are faster).

Run it on an otherwise idle machine. torchvision's CPU kernel is one single-threaded loop,
while ours is a chain of OpenMP-parallel ATen ops: when other processes also load the 2
cores, OpenMP's default active waiting makes every parallel region spin for a descheduled
partner thread and our times grow several-fold (torchvision's much less). On a shared
machine run with OMP_WAIT_POLICY=PASSIVE (it applies to both implementations in the
process). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
import torchvision

from maskrcnn.modeling.poolers import MultiLevelRoIAlign
from maskrcnn.ops.roi_align import roi_align
from maskrcnn.ops.roi_align_masks import roi_align_masks

IMAGE_HW = (800, 1216)
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
NAMES = ["p2", "p3", "p4", "p5"]


def random_boxes(gen: torch.Generator, k: int) -> torch.Tensor:
    """[k, 4] xyxy boxes, sides uniform in 16..400 px, clipped to the image."""
    wh = torch.empty(k, 2).uniform_(16, 400, generator=gen)
    centre = torch.rand(k, 2, generator=gen) * torch.tensor([IMAGE_HW[1], IMAGE_HW[0]])
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], dim=1)
    return torch.minimum(boxes.clamp(min=0), torch.tensor([IMAGE_HW[1], IMAGE_HW[0]] * 2))


def single_level_case(gen, k, out, sampling, aligned, channels_last=False):
    feat = torch.randn(1, 256, 200, 304, generator=gen, requires_grad=True)
    boxes = [random_boxes(gen, k)]
    # channels_last: the same values in NHWC memory, given to ours only (no transposes)
    ours_feat = feat.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    ours_feat = ours_feat if channels_last else feat

    def ours():
        return roi_align(ours_feat, boxes, out, 0.25, sampling, aligned)

    def ref():
        return torchvision.ops.roi_align(feat, boxes, out, 0.25, sampling, aligned)

    return [feat, ours_feat], ours, ref


def multi_level_case(gen, k, out, sampling, aligned):
    feats = [torch.randn(1, 256, 200 >> i, 304 >> i, generator=gen, requires_grad=True)
             for i in range(4)]
    boxes = [random_boxes(gen, k)]
    pooler = MultiLevelRoIAlign(out, SCALES, sampling, aligned)
    if aligned:  # MultiScaleRoIAlign has no aligned option: per-level torchvision RoIAlign
        levels = pooler.assign_levels(boxes[0])
        rois = torch.cat([torch.zeros(k, 1), boxes[0]], dim=1)

        def ref():
            result = feats[0].new_zeros((k, 256, out, out))
            for level, (feat, scale) in enumerate(zip(feats, SCALES)):
                idx = (levels == level).nonzero().squeeze(1)
                pooled = torchvision.ops.roi_align(feat, rois[idx], out, scale, sampling, True)
                result = result.index_copy(0, idx, pooled)
            return result
    else:
        reference = torchvision.ops.MultiScaleRoIAlign(NAMES, out, sampling)
        named = OrderedDict(zip(NAMES, feats))

        def ref():
            return reference(named, boxes, [IMAGE_HW])

    return feats, lambda: pooler(feats, boxes), ref


def mask_target_case(gen, k, g):
    """k RoIs around g rectangle masks (the positives' ground truth), as in training."""
    boxes = random_boxes(gen, g)
    masks = torch.zeros(g, *IMAGE_HW, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    index = torch.randint(0, g, (k,), generator=gen)
    jitter = torch.empty(k, 4).uniform_(-0.1, 0.1, generator=gen)
    size = (boxes[index, 2:] - boxes[index, :2]).repeat(1, 2)
    rois = torch.cat([index[:, None].float(), boxes[index] + jitter * size], dim=1)

    def ours():
        return roi_align_masks(masks, rois, 28, 0, False)

    def ref():
        return torchvision.ops.roi_align(masks[:, None].to(rois), rois, 28, 1.0, 0, False)[:, 0]

    return [], ours, ref


def timed(fn: Callable[[], torch.Tensor], inputs: list[torch.Tensor], grad: torch.Tensor | None):
    for t in inputs:
        t.grad = None
    start = time.perf_counter()
    out = fn()
    if grad is not None:
        out.backward(grad)
    return time.perf_counter() - start


def bench(name, case, runs, rows):
    feats, ours, ref = case
    out_ours, out_ref = ours(), ref()
    diff = (out_ours - out_ref).abs().max().item()
    grad = torch.randn_like(out_ref)
    passes = (("fwd", None), ("fwd+bwd", grad)) if feats else (("fwd", None),)
    for mode, g in passes:
        times = {"ours": [], "tv": []}
        timed(ours, feats, g), timed(ref, feats, g)  # warm-up
        for run in range(runs):
            order = (("ours", ours), ("tv", ref)) if run % 2 == 0 else (("tv", ref), ("ours", ours))
            for key, fn in order:
                times[key].append(timed(fn, feats, g))
        ours_ms = statistics.median(times["ours"]) * 1e3
        tv_ms = statistics.median(times["tv"]) * 1e3
        rows.append((name, mode, ours_ms, tv_ms, ours_ms / tv_ms, diff))
        print(f"{name:<34} {mode:<8} {ours_ms:9.1f} {tv_ms:12.1f} {ours_ms / tv_ms:7.2f}"
              f" {diff:10.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per implementation")
    args = parser.parse_args()
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    cases = [
        ("a  1000 RoIs 7x7 s2, 1 level", lambda: single_level_case(gen, 1000, 7, 2, False)),
        ("a4 1000 RoIs 7x7 s2, P2-P5", lambda: multi_level_case(gen, 1000, 7, 2, False)),
        ("b  100 RoIs 14x14 s2, 1 level", lambda: single_level_case(gen, 100, 14, 2, False)),
        ("b4 100 RoIs 14x14 s2, P2-P5", lambda: multi_level_case(gen, 100, 14, 2, False)),
        ("d2 1000 RoIs 7x7 aligned adapt P2-P5", lambda: multi_level_case(gen, 1000, 7, 0, True)),
        ("a  ours on channels_last map", lambda: single_level_case(gen, 1000, 7, 2, False, True)),
        ("b  ours on channels_last map", lambda: single_level_case(gen, 100, 14, 2, False, True)),
        ("m  mask targets 128 RoIs 28x28 adapt", lambda: mask_target_case(gen, 128, 20)),
    ]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"threads {torch.get_num_threads()}, runs {args.runs} (median), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"{'case':<34} {'pass':<8} {'ours ms':>9} {'torchvision':>12} {'ratio':>7}"
          f" {'max |diff|':>10}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows: list = []
    for name, make in cases:
        bench(name, make(), args.runs, rows)
    print(f"load average after: {os.getloadavg()[0]:.2f} (2 cores; above ~0.5 other work competes)")


if __name__ == "__main__":
    main()
