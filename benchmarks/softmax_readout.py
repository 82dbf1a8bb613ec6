"""Why the softmax masks of Table 2b lose: read the same softmax-trained logits three ways
and evaluate each (mask AP / AP50 with pycocotools, the model's own detections):

  class prob   the predicted class's softmax probability > 0.5 (what the model does: the
               paper's coupled masks)
  argmax       the pixels whose most likely class is the predicted one
  foreground   1 - p(background) > 0.5 (a class-agnostic reading of the same logits)

If "foreground" is near the sigmoid model's AP while "class prob" is far below, the
network segments objects well and the loss is in the per-pixel choice between classes.

    .venv/bin/python benchmarks/softmax_readout.py runs/ablations/shapes/mask_loss=softmax/seed0 \
        [--json runs/ablations/data_shapes/val.json --images runs/ablations/data_shapes/images]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from maskrcnn.cli import main as cli_main
from maskrcnn.modeling import mask_head

READOUTS = {
    "class prob": lambda probs, labels: probs[torch.arange(labels.shape[0]), labels],
    "argmax": lambda probs, labels: (probs.argmax(dim=1) == labels[:, None, None]).float(),
    "foreground": lambda probs, labels: 1 - probs[:, 0],
}


def evaluate(run: Path, readout: str, json_path: str, images: str) -> dict:
    """Mask and box AP of the run's model with the mask read by `readout`."""
    original = mask_head.MaskHeadBase.inference

    def inference(self, mask_logits, labels):
        if self.mask_loss != "softmax":
            raise SystemExit(f"{run}: not a softmax-mask model (roi_heads.mask_loss)")
        return READOUTS[readout](mask_logits.softmax(dim=1), labels)

    mask_head.MaskHeadBase.inference = inference
    try:
        with tempfile.TemporaryDirectory() as out:
            cli_main(["eval", "--weights", str(run / "model_final.pt"), "--json", json_path,
                      "--images", images, "--out", out])
            return json.loads((Path(out) / "metrics.json").read_text())
    finally:
        mask_head.MaskHeadBase.inference = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of softmax-mask models")
    parser.add_argument("--json", default="runs/ablations/data_shapes/val.json")
    parser.add_argument("--images", default="runs/ablations/data_shapes/images")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        for readout in READOUTS:
            metrics = evaluate(run, readout, args.json, args.images)
            rows.append((str(run), readout, 100 * metrics["segm"]["AP"],
                         100 * metrics["segm"]["AP50"], 100 * metrics["bbox"]["AP"]))
    print(f"{'run':55s} {'mask read as':12s} mask AP  AP50  box AP")
    for run, readout, ap, ap50, box in rows:
        print(f"{run:55s} {readout:12s} {ap:7.1f} {ap50:5.1f} {box:7.1f}")


if __name__ == "__main__":
    main()
