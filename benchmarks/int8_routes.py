"""The int8 routes compared on the R50-FPN at 800x1216 (how `maskrcnn quantize` was chosen).

Same perturbed seeded weights and image as bench_model.py (~100 detections), the same four
other random images for calibration, runs alternating, medians:
- ONNX Runtime static QDQ of our exported graph (Conv only, per channel; and with
  reduce_range), run on ONNX Runtime and on OpenVINO;
- OpenVINO NNCF post-training quantization of our exported IR (performance preset), the
  rest of the graph in f32 or bf16;
- PyTorch FX graph mode (x86 qconfig) of the body + FPN, the rest eager float32;
against torch fp32 exact / optimize_for_inference and the float runtimes. Needs `pip install
nncf` in the venv (not a project dependency). Docs: docs/deploy.md ("int8").

    .venv/bin/python benchmarks/int8_routes.py [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_deploy import matched

import maskrcnn
from maskrcnn.deploy import load_exported
from maskrcnn.modeling.backbone import fold_frozen_batchnorm
from maskrcnn.testing import (
    our_copy,
    perturbed_torchvision_maskrcnn,
    smooth_random_images,
    torchvision_config,
)


def feeds(image: torch.Tensor) -> dict[str, np.ndarray]:
    return {"images": image[None].numpy(),
            "image_sizes": np.array([image.shape[1:]], np.int64),
            "score_threshold": np.array(0.05, np.float32),
            "mask_threshold": np.array(0.5, np.float32)}


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - start:.0f} s", flush=True)
    return result


def ort_qdq(source: Path, target: Path, calibration, reduce_range: bool) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([feeds(image) for image in calibration])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"], per_channel=True, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return target


def nncf_int8(xml: Path, target: Path, calibration) -> Path:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    dataset = nncf.Dataset([feeds(image) for image in calibration])
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration),
                              preset=nncf.QuantizationPreset.PERFORMANCE)
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return target


def fx_int8_body(tv_model, calibration):
    """Our model with its body + FPN quantized by torch.ao FX (x86), the rest float32."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = our_copy(tv_model, torchvision_config()).eval()
    fold_frozen_batchnorm(model)
    model.backbone = prepare_fx(model.backbone, get_default_qconfig_mapping("x86"),
                                (torch.zeros(1, 3, 800, 1216),))
    with torch.no_grad():
        for image in calibration:
            model.predict([image])
    model.backbone = convert_fx(model.backbone)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = smooth_random_images([(800, 1216)])
    calibration = smooth_random_images([(800, 1216), (800, 1216), (640, 960), (720, 1100)],
                                       seed=5)
    tv_model = perturbed_torchvision_maskrcnn(images)
    exact = our_copy(tv_model, torchvision_config()).eval()
    fast = our_copy(tv_model, torchvision_config()).optimize_for_inference()
    folder = Path(tempfile.mkdtemp(prefix="int8_routes-"))
    onnx_path = maskrcnn.export(exact, folder / "r50.onnx")[0]
    xml = maskrcnn.export(exact, folder / "r50.xml", "openvino")[0]
    nncf_xml = timed("NNCF quantize", lambda: nncf_int8(xml, folder / "nncf.xml", calibration))
    qdq = timed("ONNX Runtime quantize_static",
                lambda: ort_qdq(onnx_path, folder / "qdq.onnx", calibration, False))
    qdq_rr = ort_qdq(onnx_path, folder / "qdq_rr.onnx", calibration, True)
    fx = timed("torch.ao FX quantize", lambda: fx_int8_body(tv_model, calibration))
    models = {
        "ONNX Runtime fp32": load_exported(onnx_path, threads=args.threads),
        "OpenVINO f32": load_exported(xml, threads=args.threads, precision="fp32"),
        "OpenVINO NNCF int8 (rest f32)": load_exported(nncf_xml, threads=args.threads,
                                                       precision="fp32"),
        "OpenVINO NNCF int8 (rest bf16)": load_exported(nncf_xml, threads=args.threads,
                                                        precision="bf16"),
        "ONNX Runtime QDQ int8": load_exported(qdq, threads=args.threads),
        "ONNX Runtime QDQ int8 reduce_range": load_exported(qdq_rr, threads=args.threads),
        "OpenVINO on the QDQ file": load_exported(qdq, "openvino", threads=args.threads),
    }
    rows = {"torch fp32 exact": exact, "torch fp32 optimize_for_inference": fast, **models,
            "torch.ao FX int8 body + FPN": fx}
    times = {row: [] for row in rows}
    outputs = {}
    with torch.no_grad():
        for model in rows.values():
            model.predict(images)  # warm-up
        for _ in range(args.runs):
            for row, model in rows.items():
                start = time.perf_counter()
                outputs[row] = model.predict(images)[0]
                times[row].append(time.perf_counter() - start)
    base = statistics.median(times["torch fp32 exact"])
    print(f"{args.threads} threads, {args.runs} runs alternating, load average "
          f"{os.getloadavg()[0]:.1f}; matched = same label and IoU > 0.99 in torch exact's")
    for row, runs in times.items():
        median = statistics.median(runs)
        print(f"{row:36s} {median:7.3f} {median / base:6.3f} "
              f"matched {matched(outputs[row], outputs['torch fp32 exact']):.0%}")


if __name__ == "__main__":
    main()
