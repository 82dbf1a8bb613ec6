"""Peak resident memory (max RSS) of whole jobs, ours against torchvision's, each job in a
fresh process of its own (resource.getrusage of that child alone):

  floor       `import torch, torchvision` and nothing else (what every job pays)
  predict     one 800 x 1216 image through the R50-FPN (torchvision's maskrcnn_resnet50_fpn
              with the perturbed seeded weights of bench_model.py, saved as a torchvision
              state_dict): ours is the `maskrcnn predict` command on a PNG; torchvision's
              job loads the same file into maskrcnn_resnet50_fpn, reads the same PNG and
              predicts, masks thresholded at 0.5
  train step  one training step (SGD) of our small preset at batch 2 on 384 x 510 images
              against torchvision's same network (benchmarks/bench_train.py's twin)

    .venv/bin/python benchmarks/bench_memory.py [--threads 2] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent

FLOOR = "import torch, torchvision"

TORCHVISION_PREDICT = """
import sys, numpy as np, torch
from PIL import Image
from torchvision.models.detection import maskrcnn_resnet50_fpn
torch.set_num_threads({threads})
model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
model.load_state_dict(torch.load(sys.argv[1], weights_only=True))
model.eval()
image = torch.from_numpy(np.asarray(Image.open(sys.argv[2]).convert("RGB")).copy())
with torch.no_grad():
    out = model([image.permute(2, 0, 1).float() / 255])[0]
masks = out["masks"][:, 0] > 0.5
print(len(out["boxes"]), "detections")
"""

TRAIN_STEP = """
import sys, torch
sys.path.insert(0, {benchmarks!r})
from bench_train import batch, torchvision_twin
from maskrcnn.config import preset
from maskrcnn.modeling import build_model
torch.set_num_threads({threads})
cfg = preset("small")
torch.manual_seed(0)
model = build_model(cfg) if sys.argv[1] == "ours" else torchvision_twin(cfg)
model.train()
images, targets = batch(384, 2, cfg.roi_heads.num_classes)
if sys.argv[1] != "ours":
    targets = [{{"boxes": t.boxes, "labels": t.labels, "masks": t.masks}} for t in targets]
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                            momentum=0.9)
losses = model(images, targets)
sum(losses.values()).backward()
optimizer.step()
print(sorted(losses))
"""


def peak_mib(args: list[str]) -> float:
    """Max RSS (MiB) of `args` run as a child of a fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys\n"
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *args], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024  # Linux: KiB


def prepare(folder: Path) -> tuple[Path, Path]:
    """The R50-FPN weights (torchvision state_dict) and an 800 x 1216 PNG."""
    import numpy as np
    import torch
    from PIL import Image

    from maskrcnn.testing import perturbed_torchvision_maskrcnn, smooth_random_images

    image = smooth_random_images([(800, 1216)])[0]
    png = folder / "image.png"
    Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(png)
    # the calibration sees the PNG's pixels, as both predict jobs will
    pixels = torch.from_numpy(np.asarray(Image.open(png))).permute(2, 0, 1).float() / 255
    weights = folder / "r50_torchvision.pth"
    torch.save(perturbed_torchvision_maskrcnn([pixels]).state_dict(), weights)
    return weights, png


def jobs(folder: Path, weights: Path, png: Path, threads: int) -> dict[str, list[str]]:
    python = sys.executable
    ours_predict = [python, "-m", "maskrcnn", "predict", str(png), "--weights", str(weights),
                    "--out", str(folder / "predict"), "--device", "cpu"]
    train = TRAIN_STEP.format(benchmarks=str(BENCHMARKS), threads=threads)
    return {
        "floor (import torch, torchvision)": [python, "-c", FLOOR],
        "predict R50-FPN 800x1216, torchvision": [
            python, "-c", TORCHVISION_PREDICT.format(threads=threads), str(weights), str(png)],
        "predict R50-FPN 800x1216, ours (maskrcnn predict)": ours_predict,
        "train step small preset batch 2, torchvision": [python, "-c", train, "torchvision"],
        "train step small preset batch 2, ours": [python, "-c", train, "ours"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="runs of each job (max RSS: min)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights, png = prepare(folder)
        import os

        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # `maskrcnn predict` too
        results = {}
        for name, command in jobs(folder, weights, png, args.threads).items():
            results[name] = min(peak_mib(command) for _ in range(args.runs))
            print(f"{name:52s} {results[name]:8.0f} MiB", flush=True)
    pairs = [("predict R50-FPN 800x1216, ours (maskrcnn predict)",
              "predict R50-FPN 800x1216, torchvision"),
             ("train step small preset batch 2, ours",
              "train step small preset batch 2, torchvision")]
    for ours, theirs in pairs:
        print(f"ratio {ours.split(',')[0]}: {results[ours] / results[theirs]:.3f}")
    print(json.dumps({k: round(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
