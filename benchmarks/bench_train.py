"""Seconds per training iteration: our `small` preset against torchvision's Mask R-CNN
built with the same backbone (ResNet-18, GroupNorm, FPN of 128 channels), heads, RoI
counts and image size, in one process, alternating, median of --iters iterations.

    .venv/bin/python benchmarks/bench_train.py [--iters 10] [--batch 2] [--size 384] [--amp]
        [--threads 2] [--nchw]

--amp runs the forward passes under bfloat16 autocast (fast where the CPU has AVX512-BF16
or AMX). Ours trains channels_last as the trainer does (--nchw: NCHW, as before); the third
row is torchvision's network switched to channels_last by the same call, for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from maskrcnn.config import ModelConfig, preset
from maskrcnn.modeling import build_model
from maskrcnn.structures import Targets
from maskrcnn.testing import smooth_random_images


def torchvision_twin(cfg: ModelConfig) -> nn.Module:
    """torchvision's MaskRCNN with the settings of our config."""
    gn = partial(nn.GroupNorm, 32)
    body = resnet18(weights=None, norm_layer=gn)
    backbone = BackboneWithFPN(
        body,
        {f"layer{k}": str(k - 1) for k in range(1, 5)},
        [64, 128, 256, 512],
        cfg.backbone.fpn_channels,
        norm_layer=gn,
    )
    channels, rh = cfg.backbone.fpn_channels, cfg.roi_heads
    return MaskRCNN(
        backbone,
        min_size=cfg.input.min_size_test,
        max_size=cfg.input.max_size,
        rpn_pre_nms_top_n_train=cfg.rpn.pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn.post_nms_top_n_train,
        rpn_batch_size_per_image=cfg.rpn.batch_size_per_image,
        box_batch_size_per_image=rh.batch_size_per_image,
        box_head=TwoMLPHead(channels * 49, rh.representation_size),
        box_predictor=FastRCNNPredictor(rh.representation_size, rh.num_classes),
        mask_head=MaskRCNNHeads(channels, [rh.mask_head_channels] * rh.mask_head_convs, 1),
        mask_predictor=MaskRCNNPredictor(
            rh.mask_head_channels, rh.mask_head_channels, rh.num_classes
        ),
    )


def batch(size: int, count: int, num_classes: int):
    """Smooth images with 4 box-shaped objects each."""
    images = smooth_random_images([(size, int(size * 1.33))] * count)
    gen = torch.Generator().manual_seed(0)
    targets = []
    for image in images:
        height, width = image.shape[-2:]
        xy = torch.rand(4, 2, generator=gen) * torch.tensor([width * 0.6, height * 0.6])
        wh = 16 + torch.rand(4, 2, generator=gen) * torch.tensor([width * 0.3, height * 0.3])
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(4, height, width, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        labels = torch.randint(1, num_classes, (4,), generator=gen)
        targets.append(Targets(boxes, labels, masks))
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nchw", action="store_true",
                        help="ours in NCHW (trainer: channels_last=false)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("small")
    cfg.roi_heads.num_classes = 5
    cfg.input.min_size_train = (args.size,)
    cfg.input.min_size_test = args.size
    torch.manual_seed(0)
    ours, theirs = build_model(cfg).train(), torchvision_twin(cfg).train()
    theirs_cl = torchvision_twin(cfg).train().to(memory_format=torch.channels_last)
    if not args.nchw:
        ours.to(memory_format=torch.channels_last)
    images, targets = batch(args.size, args.batch, cfg.roi_heads.num_classes)
    tv_targets = [{"boxes": t.boxes, "labels": t.labels, "masks": t.masks} for t in targets]
    steps = {
        "torchvision": (theirs, lambda: theirs(images, tv_targets)),
        "maskrcnn (ours)": (ours, lambda: ours(images, targets)),
        "torchvision CL": (theirs_cl, lambda: theirs_cl(images, tv_targets)),
    }
    optimizers = {
        name: torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        for name, (model, _) in steps.items()
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for it in range(args.iters + 1):  # the first iteration is a warm-up
        for name, (_, loss_fn) in steps.items():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
                loss = sum(loss_fn().values())
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            if it > 0:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"training step, batch {args.batch} of {args.size}x{int(args.size * 1.33)}, "
          f"small preset (ResNet-18 GN, FPN 128), {args.iters} iterations, {args.threads} "
          f"threads" + (", bfloat16 autocast" if args.amp else "")
          + (", ours NCHW" if args.nchw else ", ours channels_last"))
    for name, median in medians.items():
        print(f"{name:16s} median {median:.3f} s/iter")
    for name in ("maskrcnn (ours)", "torchvision CL"):
        print(f"ratio {name} / torchvision: {medians[name] / medians['torchvision']:.3f}")


if __name__ == "__main__":
    main()
