"""`maskrcnn predict`: images or folders -> COCO results and overlays, in batches, on any
backend (torch, onnxruntime, openvino)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import PRECISION_HELP, CliError, load_for_inference

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

EXAMPLES = """examples:
  maskrcnn predict street.jpg --weights maskrcnn_resnet50_fpn_coco.pth --out out/
  maskrcnn predict photos/ more.png --weights runs/demo/model_final.pt --score-thresh 0.5
  maskrcnn predict photos/ --weights model.onnx --batch-size 4     # ONNX Runtime
  maskrcnn predict photos/ --weights model.xml                     # OpenVINO
writes OUT/predictions.json (COCO results: file_name, image_id, category_id, bbox xywh,
score, RLE segmentation) and OUT/overlays/<image>.png for every image."""


def find_images(inputs: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                print(f"maskrcnn: warning: {path}: no image files in this folder", file=sys.stderr)
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def _batches(paths: list[Path], size: int) -> Iterator[list[tuple[int, Path]]]:
    numbered = list(enumerate(paths, start=1))
    for start in range(0, len(numbered), size):
        yield numbered[start : start + size]


def _read(batch: list[tuple[int, Path]]) -> tuple[list[tuple[int, Path, object]], int]:
    """The images of a batch that can be read; an error line for each that cannot."""
    from ..data.images import load_image

    readable, failed = [], 0
    for image_id, path in batch:
        try:
            readable.append((image_id, path, load_image(path)))
        except (OSError, ValueError) as err:
            print(f"maskrcnn: error: {err}", file=sys.stderr)
            failed += 1
    return readable, failed


def cmd_predict(args: argparse.Namespace) -> int:
    from ..io.coco_results import detections_to_coco, write_results_json
    from ..visualize import save_overlay

    if args.batch_size < 1:
        raise CliError("--batch-size must be >= 1")
    paths = find_images(args.inputs)
    if not paths:
        raise CliError("no images to predict on")
    model = load_for_inference(args.weights, args.backend, args.device, args.precision)
    device = getattr(model, "device", None) or next(model.parameters()).device
    class_names = model.cfg.class_names or None
    category_ids = model.cfg.category_ids or None
    out = Path(args.out)
    results, failed = [], 0
    for batch in _batches(paths, args.batch_size):
        readable, batch_failed = _read(batch)
        failed += batch_failed
        if not readable:
            continue
        detections = model.predict([image.to(device) for _, _, image in readable],
                                   score_thresh=args.score_thresh)
        for (image_id, path, image), dets in zip(readable, detections):
            dets = dets.to("cpu")
            results.extend(detections_to_coco(dets, image_id, category_ids,
                                              file_name=str(path)))
            overlay = out / "overlays" / f"{image_id:05d}_{path.stem}.png"
            save_overlay(image, dets, overlay, class_names, score_thresh=args.vis_thresh)
            print(f"[{image_id}/{len(paths)}] {path}: {len(dets)} detections -> {overlay}")
    out.mkdir(parents=True, exist_ok=True)
    write_results_json(results, out / "predictions.json")
    print(f"wrote {len(results)} detections of {len(paths) - failed} images to "
          f"{out / 'predictions.json'} ({model.precision})")
    if failed:
        raise CliError(f"{failed} of {len(paths)} images could not be read (see above)")
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser(
        "predict", help="detect and segment objects in images", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--weights", required=True,
                   help="our checkpoint, a torchvision state_dict, or an exported .onnx/.xml")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"],
                   help="runtime (default: from the file: .onnx onnxruntime, .xml openvino, "
                        "else torch)")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--score-thresh", type=float, default=0.05,
                   help="keep detections above this score (default 0.05)")
    p.add_argument("--vis-thresh", type=float, default=0.5,
                   help="draw detections above this score (default 0.5)")
    p.add_argument("--batch-size", type=int, default=1, help="images per batch (default 1)")
    p.add_argument("--device", default="auto",
                   help="auto (default: cuda if available; cpu for exported models), cpu, "
                        "cuda, ...")
    p.add_argument("--precision", choices=["fp32", "bf16"], help=PRECISION_HELP)
    p.set_defaults(func=cmd_predict)
