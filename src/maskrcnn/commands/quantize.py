"""`maskrcnn quantize`: weights + the user's images -> an int8 model file (ONNX QDQ, or
OpenVINO IR) that predict, eval and export take as --weights."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import CliError
from .predict import find_images

EXAMPLES = """examples:
  maskrcnn quantize --weights runs/demo/train/model_final.pt --images photos/ \\
      --out model_int8.onnx                    # ONNX Runtime, or --backend openvino
  maskrcnn quantize --weights model.pt --images photos/ --out model_int8.xml   # OpenVINO IR
  maskrcnn predict photos/ --weights model_int8.onnx        # then run it (eval the same)
  maskrcnn export --weights model_int8.onnx --format openvino --out model_int8.xml
Post-training static quantization: the convolutions and the box head's fully connected
layers run in int8, calibrated on up to --calibration-images of the images (evenly spread
over the list); the last layers and everything else stay float32. Check the accuracy on
your data with `maskrcnn eval` (docs/deploy.md, "int8")."""


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..api import image_to_tensor
    from ..deploy import backend_for
    from ..io.weights import load_model
    from ..progress import Progress

    if not args.out.endswith((".onnx", ".xml")):
        raise CliError(f"--out {args.out}: an int8 model is written as NAME.onnx or NAME.xml")
    if args.calibration_images < 1:
        raise CliError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    if backend_for(args.weights) != "torch":
        raise CliError(f"--weights {args.weights}: quantize takes the weights (.pt, .pth, "
                       ".pkl, .safetensors) an exported model was made from")
    paths = _spread(find_images(args.images), args.calibration_images)
    if not paths:
        raise CliError(f"{', '.join(args.images)}: no images to calibrate on")
    start = time.perf_counter()
    model = load_model(args.weights, device="cpu")
    images = []
    for path in paths:
        try:
            images.append(image_to_tensor(path))
        except (OSError, ValueError) as err:
            print(f"maskrcnn: warning: skipping {path}: {err}", file=sys.stderr)
    if not images:
        raise CliError("none of the calibration images could be read")
    from ..deploy.quantize import quantize

    progress = Progress(len(images), "calibrating")
    try:
        written = quantize(model, images, args.out, progress=progress.update,
                           **({"opset": args.opset} if args.opset else {}))
    finally:
        progress.close()
    print(f"wrote {', '.join(str(p) for p in written)} (int8, calibrated on {len(images)} "
          f"images) in {time.perf_counter() - start:.0f} s")
    return 0


def _spread(paths: list[Path], count: int) -> list[Path]:
    """At most `count` of `paths`, evenly spread over the list (first and last included)."""
    if len(paths) <= count:
        return paths
    if count == 1:
        return paths[:1]
    return [paths[round(i * (len(paths) - 1) / (count - 1))] for i in range(count)]


def add_parser(commands) -> None:
    p = commands.add_parser(
        "quantize", help="int8 model file calibrated on your images (ONNX / OpenVINO)",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", required=True, help="the float weights (any format we read)")
    p.add_argument("--images", required=True, nargs="+",
                   help="image files or folders to calibrate on (your kind of images)")
    p.add_argument("--out", required=True, help="NAME.onnx (ONNX QDQ) or NAME.xml (OpenVINO)")
    p.add_argument("--calibration-images", type=int, default=32, metavar="N",
                   help="images used for calibration, spread over the list (default 32)")
    p.add_argument("--opset", type=int, help="ONNX opset, 16-21 (default 18)")
    p.set_defaults(func=cmd_quantize)
