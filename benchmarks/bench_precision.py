"""Inference precisions side by side (fp32, bf16, int8): accuracy (box and mask AP) on a
dataset and speed, in one process, runs alternating.

Dataset part (with --weights, --json, --images): our model after optimize_for_inference in
fp32 and bf16 (torch), the weights exported to ONNX on ONNX Runtime (fp32) and OpenVINO
(fp32, bf16), and with --calibrate DIR the int8 file of `maskrcnn quantize` (calibrated on
images of DIR) on both runtimes. For each: COCO box and mask AP of the whole set, then
--runs passes over the first --images-timed images, models alternating image by image;
median seconds per image and the ratio to the first row.

Speed part (--speed r50 small): the R50-FPN at 800x1216 with the perturbed seeded
weights of bench_model.py (~100 detections), torchvision's own model beside it (the
ratio's base), and the small preset at 384x512 (random weights spread as in the deploy
tests; ratio to ours exact): fp32 eager (exact), fp32 optimize_for_inference, bf16
optimized; with --runtimes also the export on ONNX Runtime (fp32) and OpenVINO (f32, bf16)
and the int8 file (calibrated on 4 other random images) on both. --batch N: N images per
call (img/s is the throughput). Median of --runs, and the share of the first image's
detections with a same-label twin of IoU > 0.99 (matched) and > 0.9 (@0.9) in the exact
model's output (random weights: near-ties, which any rounding reorders; the dataset part
measures accuracy). Peak memory: benchmarks/bench_memory.py (a process per job).

With --runtimes every row shares one process, and ONNX Runtime's and OpenVINO's thread
pools slow the torch rows that follow them (torchvision's 1.3-1.8x on a 2-core machine,
docs/benchmarks.md): for speed figures run the torch rows without --runtimes and each
runtime alone with --rows.

    .venv/bin/python benchmarks/bench_precision.py --weights W --json val.json \
        --images images/ [--runs 3] [--backends torch onnxruntime openvino] \
        [--calibrate train_images/] [--speed r50 small [--runtimes] [--batch 8]]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import maskrcnn
from maskrcnn.engine.inference import evaluate_model
from maskrcnn.engine.precision import PRECISIONS, bf16_supported
from maskrcnn.engine.train_data import load_eval_dataset
from maskrcnn.structures import Detections

sys.path.insert(0, str(Path(__file__).parent))
from bench_deploy import matched  # noqa: E402  (benchmarks/ is not a package)


def dataset_models(args, folder: Path):
    """{(backend, precision): model}: torch fp32 / bf16 (optimize_for_inference), the
    export on ONNX Runtime (fp32) and OpenVINO (fp32, bf16), and with --calibrate the int8
    file of `maskrcnn quantize` on both runtimes."""
    from maskrcnn.deploy import load_exported

    models, weights, threads = {}, args.weights, args.threads
    if "torch" in args.backends:
        for precision in PRECISIONS:
            models["torch", precision] = maskrcnn.load_model(
                weights, precision=precision).optimize_for_inference()
    runtimes = [b for b in args.backends if b != "torch"]
    if not runtimes:
        return models
    start = time.perf_counter()
    onnx_path = maskrcnn.export(maskrcnn.load_model(weights), folder / "model.onnx")[0]
    print(f"exported {weights} to ONNX in {time.perf_counter() - start:.0f} s")
    int8_path = None
    if args.calibrate:
        from maskrcnn.commands.predict import find_images
        from maskrcnn.commands.quantize import _spread
        from maskrcnn.deploy.quantize import quantize

        start = time.perf_counter()
        paths = _spread(find_images([args.calibrate]), args.calibration_images)
        int8_path = quantize(maskrcnn.load_model(weights),
                             [maskrcnn.image_to_tensor(p) for p in paths],
                             folder / "int8.onnx")[0]
        print(f"quantized on {len(paths)} images in {time.perf_counter() - start:.0f} s")
    for backend in runtimes:
        precisions = ["fp32", "bf16"] if backend == "openvino" else ["fp32"]
        for precision in precisions:
            models[backend, precision] = load_exported(onnx_path, backend, threads=threads,
                                                       precision=precision)
        if int8_path is not None:
            models[backend, "int8"] = load_exported(int8_path, backend, threads=threads)
    return models


def run_dataset(args, folder: Path) -> None:
    models = dataset_models(args, folder)
    _, dataset = load_eval_dataset(args.json, args.images, masks=False, verbose=False)
    cfg = next(iter(models.values())).cfg
    metrics, detections = {}, {}
    for key, model in models.items():
        metrics[key], results = evaluate_model(
            model, dataset, args.json, label_to_category_id=cfg.category_ids or None,
            batch_size=1, max_dets=cfg.roi_heads.detections_per_image)
        detections[key] = len(results)
    images = _first_images(args.json, args.images, args.images_timed)
    times = {key: [] for key in models}
    with torch.no_grad():
        for model in models.values():
            model.predict(images[:1])  # warm-up
        for _ in range(args.runs):
            for image in images:
                for key, model in models.items():  # alternating, image by image
                    start = time.perf_counter()
                    model.predict([image])
                    times[key].append(time.perf_counter() - start)
    print(f"{args.json}: {len(dataset)} images for AP, {len(images)} images x {args.runs} "
          f"runs timed (median s per image), {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'backend':11s} {'precision':9s} {'box AP':>7s} {'AP50':>6s} {'mask AP':>8s} "
          f"{'AP50':>6s} {'dets':>6s} {'s/image':>8s} {'ratio':>6s}")
    first = statistics.median(times[next(iter(models))])
    for (backend, precision), model in models.items():
        m = metrics[backend, precision]
        median = statistics.median(times[backend, precision])
        ran = getattr(model, "precision", precision)
        print(f"{backend:11s} {ran:9s} {m['bbox']['AP']:7.4f} {m['bbox']['AP50']:6.3f} "
              f"{m['segm']['AP']:8.4f} {m['segm']['AP50']:6.3f} "
              f"{detections[backend, precision]:6d} {median:8.4f} {median / first:6.3f}")


def _first_images(json_path: str, images_dir: str, count: int):
    import json

    with open(json_path) as f:
        infos = json.load(f)["images"][:count]
    return [maskrcnn.image_to_tensor(Path(images_dir) / info["file_name"]) for info in infos]


def speed_models(name: str, batch: int):
    """(images, exact model, torchvision's model or None) for the speed part: the R50-FPN
    at 800x1216 with the perturbed seeded weights of bench_model.py (torchvision's own model
    beside it), or the small preset at its test size (384x512) with spread random weights."""
    from maskrcnn.testing import (
        our_copy,
        perturbed_torchvision_maskrcnn,
        smooth_random_images,
        spread_scores,
        torchvision_config,
    )

    if name == "r50":
        first = smooth_random_images([(800, 1216)])
        tv_model = perturbed_torchvision_maskrcnn(first)
        images = first + smooth_random_images([(800, 1216)] * (batch - 1), seed=7)
        return images, our_copy(tv_model, torchvision_config()).eval(), tv_model
    from maskrcnn.config import preset
    from maskrcnn.modeling import build_model

    torch.manual_seed(0)
    images = smooth_random_images([(384, 512)] * batch)
    return images, spread_scores(build_model(preset("small")).eval()), None


def run_speed(args, name: str, folder: Path) -> None:
    images, exact, tv_model = speed_models(name, args.batch)

    fast, bf16 = (copy.deepcopy(exact).optimize_for_inference() for _ in range(2))
    from maskrcnn.engine.precision import set_precision

    set_precision(bf16, "bf16")
    rows = {"torchvision eager fp32": lambda: Detections(**tv_model(images)[0])} if tv_model \
        else {}
    rows.update({
        "fp32 eager (exact)": lambda: exact.predict(images)[0],
        "fp32 optimize_for_inference": lambda: fast.predict(images)[0],
        f"{bf16.precision} optimize_for_inference": lambda: bf16.predict(images)[0],
    })
    if args.runtimes:
        rows.update(runtime_rows(name, exact, images, folder, args.threads))
    reference_row = "fp32 eager (exact)"
    if args.rows:  # a subset (a process each where one process cannot hold every model)
        keep = {row: fn for row, fn in rows.items()
                if any(term.lower() in row.lower() for term in args.rows)}
        if not keep:
            raise SystemExit(f"--rows {' '.join(args.rows)}: no row matches ({', '.join(rows)})")
        reference_fn = rows[reference_row]
        rows = keep
    times = {row: [] for row in rows}
    outputs = {}
    with torch.no_grad():
        if reference_row not in rows:  # what "matched" compares with, untimed
            outputs[reference_row] = reference_fn()
        for fn in rows.values():
            fn()  # warm-up
        for _ in range(args.runs):
            for row, fn in rows.items():
                start = time.perf_counter()
                outputs[row] = fn()  # the first image's detections
                times[row].append(time.perf_counter() - start)
    reference = outputs[reference_row]
    first = statistics.median(next(iter(times.values())))
    height, width = images[0].shape[1:]
    print(f"{name} at {height}x{width}, batch {len(images)}, {len(reference)} detections, "
          f"{args.runs} runs alternating, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}; ratio to the first row")
    print(f"{'model':32s} {'median s':>9s} {'img/s':>6s} {'ratio':>6s} {'matched':>8s} "
          f"{'@0.9':>6s}  runs")
    for row, runs in times.items():
        median = statistics.median(runs)
        out = outputs[row]
        print(f"{row:32s} {median:9.3f} {len(images) / median:6.2f} {median / first:6.3f} "
              f"{matched(out, reference):8.1%} {matched(out, reference, 0.9):6.1%}  "
              + ", ".join(f"{t:.2f}" for t in runs))


def runtime_rows(name: str, exact, images, folder: Path, threads: int) -> dict:
    """The model exported: ONNX Runtime fp32, OpenVINO f32 / bf16, int8 on both (calibrated
    on 4 other random images of the model's test size)."""
    from maskrcnn.deploy import load_exported
    from maskrcnn.deploy.quantize import quantize
    from maskrcnn.testing import smooth_random_images

    start = time.perf_counter()
    onnx_path = maskrcnn.export(exact, folder / f"{name}.onnx")[0]
    height, width = images[0].shape[1:]
    calibration = smooth_random_images([(height, width)] * 4, seed=5)
    int8_path = quantize(exact, calibration, folder / f"{name}_int8.onnx")[0]
    print(f"{name} exported and quantized in {time.perf_counter() - start:.0f} s")
    models = {"ONNX Runtime fp32": load_exported(onnx_path, "onnxruntime", threads=threads)}
    for precision in PRECISIONS:
        model = load_exported(onnx_path, "openvino", threads=threads, precision=precision)
        models[f"OpenVINO {model.precision}"] = model
    models["ONNX Runtime int8"] = load_exported(int8_path, "onnxruntime", threads=threads)
    models["OpenVINO int8"] = load_exported(int8_path, "openvino", threads=threads)
    return {row: (lambda model=model: model.predict(images)[0]) for row, model in
            models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights to evaluate (with --json, --images)")
    parser.add_argument("--json", help="COCO json of the evaluation set")
    parser.add_argument("--images", help="folder of its images")
    parser.add_argument("--backends", nargs="+", default=["torch"],
                        choices=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--calibrate", metavar="DIR",
                        help="also the int8 file quantized on images of DIR (the training "
                             "images: calibration must not see the evaluation set)")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images-timed", type=int, default=10,
                        help="images of the set timed per run (default 10)")
    parser.add_argument("--speed", nargs="+", choices=["r50", "small"], default=[],
                        help="the speed part for these models (R50-FPN at 800x1216, small "
                             "preset at 384x512)")
    parser.add_argument("--runtimes", action="store_true",
                        help="with --speed: also the export on ONNX Runtime and OpenVINO, "
                             "fp32, bf16 and int8")
    parser.add_argument("--batch", type=int, default=1,
                        help="with --speed: images per call (throughput: img/s)")
    parser.add_argument("--rows", nargs="+", metavar="TEXT",
                        help="with --speed: only the rows whose name contains one of these "
                             "(e.g. OpenVINO): a process per group where memory is short")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.weights and not args.speed:
        parser.error("give --weights/--json/--images, or --speed")
    if args.weights and not (args.json and args.images):
        parser.error("--weights needs --json and --images")
    torch.set_num_threads(args.threads)
    print(f"bfloat16 arithmetic on this CPU: {bf16_supported('cpu')}")
    with tempfile.TemporaryDirectory() as folder:
        if args.weights:
            run_dataset(args, Path(folder))
        for name in args.speed:
            run_speed(args, name, Path(folder))


if __name__ == "__main__":
    main()
