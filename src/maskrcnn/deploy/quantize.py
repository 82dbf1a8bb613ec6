"""int8: post-training static quantization of the exported model (ONNX QDQ).

The exported float32 graph (exporter.build_onnx) goes through ONNX Runtime's static
quantizer: the convolutions (body, FPN, RPN head, mask head) and the box head's fully
connected layers get int8 weights (per output channel) and uint8 activations whose ranges
are calibrated by running the whole model on the user's images. Everything else (resize,
anchors, box decoding, NMS, RoIAlign, pasting) stays float32. The result is one .onnx file
in the QDQ format (QuantizeLinear / DequantizeLinear around each quantized op) that ONNX
Runtime and OpenVINO both run with int8 kernels; `.xml` output converts it to OpenVINO IR.
Why this route: docs/deploy.md ("int8").
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from torch import Tensor

from ..io.atomic import atomic_write
from ..modeling import MaskRCNN
from .exporter import DEFAULT_OPSET, build_onnx, save_openvino
from .metadata import ExportError

QUANTIZED_OPS = ("Conv", "Gemm")
PRECISION_KEY = "maskrcnn.precision"


def quantize(model: MaskRCNN, images: Sequence[Tensor], path: str | os.PathLike, *,
             opset: int = DEFAULT_OPSET, progress=None) -> list[Path]:
    """Write `model` quantized to int8 as `path` (.onnx, or .xml for OpenVINO IR),
    calibrated on `images` (float RGB [3, H, W] in [0, 1], as predict takes them; the
    model's own resize applies). Returns the files written. progress: called with the
    number of calibration images done."""
    from .. import __version__

    path = Path(path)
    if path.suffix not in (".onnx", ".xml"):
        raise ExportError(f"{path}: an int8 model is written as NAME.onnx or NAME.xml")
    if not images:
        raise ExportError("int8 calibration needs at least one image")
    proto = build_onnx(model, opset, None, __version__)
    with tempfile.TemporaryDirectory(prefix="maskrcnn-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, source)
        _quantize_static(source, target, _calibration_feeds(images, progress),
                         exclude=_predictor_nodes(proto))
        quantized = onnx.load(target)
    onnx.helper.set_model_props(quantized, {**{p.key: p.value for p in
                                               quantized.metadata_props
                                               if p.key != "onnx.infer"},
                                            PRECISION_KEY: '"int8"'})
    if path.suffix == ".xml":
        return save_openvino(quantized, path)
    atomic_write(path, lambda f: f.write(quantized.SerializeToString()), binary=True)
    return [path]


def _calibration_feeds(images: Sequence[Tensor], progress) -> Iterator[dict[str, np.ndarray]]:
    """One batch of one image per calibration step (the graph's inputs)."""
    for done, image in enumerate(images, 1):
        yield {"images": image.detach().float().cpu().numpy()[None],
               "image_sizes": np.array([image.shape[-2:]], np.int64),
               "score_threshold": np.array(0.05, np.float32),
               "mask_threshold": np.array(0.5, np.float32)}
        if progress is not None:
            progress(done)


def _predictor_nodes(proto: onnx.ModelProto) -> list[str]:
    """The layers whose outputs are the model's numbers (class scores, box deltas, mask
    logits, RPN objectness and deltas): kept float32, as is usual for the last layers."""
    produced = {name: node for node in proto.graph.node for name in node.output}
    wanted = {"box_logits", "box_deltas", "mask_logits"}
    wanted |= {o for node in proto.graph.node for o in node.output
               if o.startswith(("rpn_logits_", "rpn_deltas_"))}
    excluded = []
    for name in wanted:  # walk back through reshapes to the Conv / Gemm that made it
        node = produced.get(name)
        while node is not None and node.op_type not in QUANTIZED_OPS:
            node = produced.get(node.input[0]) if node.input else None
        if node is not None and node.name not in excluded:
            excluded.append(node.name)
    return excluded


def _quantize_static(source: Path, target: Path, feeds: Iterator[dict[str, np.ndarray]],
                     exclude: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    root = logging.getLogger()  # the quantizer advises pre-processing on the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=exclude,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
