"""Export the whole model to one ONNX graph (and from it to OpenVINO IR).

Inputs and outputs (docs/deploy.md has the full table):
  images [B, 3, H, W] float32 RGB in [0, 1], zero padded; image_sizes [B, 2] int64 (h, w);
  score_threshold [] float32; mask_threshold [] float32 (pasted masks only)
  -> boxes [N, 4] float32 xyxy in input pixels, scores [N], labels [N] int64,
     batch_index [N] int64, masks [N, H, W] bool (or [N, M, M] float32 probabilities).
Detections are grouped by image (batch_index ascending), best first within an image.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..io.atomic import atomic_write
from ..modeling import MaskRCNN
from . import graph_heads, graph_input, graph_paste, graph_resize, graph_rpn
from .metadata import ExportError, ExportInfo, info_for, to_strings
from .networks import export_networks
from .onnx_builder import BOOL, FLOAT, INT64, GraphBuilder, toposort, value_info

FORMATS = ("onnx", "openvino")
DEFAULT_OPSET = 18
OPSETS = range(16, 22)


def check_exportable(model: MaskRCNN, opset: int, mask_output: str = "pasted") -> None:
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported: choose {OPSETS.start}.."
                          f"{OPSETS.stop - 1} (RoiAlign with half_pixel needs 16)")
    if model.cfg.backbone.kind != "fpn":
        raise ExportError(f"backbone.kind {model.cfg.backbone.kind}: only FPN models export")
    sizes = (model.cfg.input.min_size_test, model.cfg.input.max_size)
    if max(sizes) >= 2**13:
        raise ExportError(f"test sizes {sizes}: the exported resize takes sizes below 8192")
    for pooler in (model.roi_heads.box_pooler, model.roi_heads.mask_pooler):
        if getattr(pooler, "method", "roi_align") != "roi_align":
            raise ExportError(f"the {pooler.pooler} pooler cannot be exported: the exported "
                              "graph pools with RoIAlign only (roi_heads.pooler: roi_align)")
        if getattr(pooler, "reduction", "avg") != "avg":
            raise ExportError("max RoIAlign cannot be exported: ONNX Runtime's and OpenVINO's "
                              "max mode do not compute a max of the bilinear samples")
    paste = model.cfg.roi_heads.mask_paste
    if paste != "torchvision" and mask_output == "pasted":
        raise ExportError(f"roi_heads.mask_paste {paste} cannot be exported with pasted masks "
                          "(the exported graph pastes as torchvision does): export with "
                          "--mask-output probs, pasted by the predictor as the model pastes, "
                          "or set roi_heads.mask_paste: torchvision")


def default_mask_output(model: MaskRCNN, mask_output: str | None) -> str:
    """`mask_output`, or when None: "pasted" (in the graph), or "probs" for a model that
    pastes as detectron2 does (the predictor pastes them the model's way)."""
    if mask_output is not None:
        return mask_output
    return "pasted" if model.cfg.roi_heads.mask_paste == "torchvision" else "probs"


def build_onnx(model: MaskRCNN, opset: int = DEFAULT_OPSET, mask_output: str | None = None,
               package_version: str = "") -> onnx.ModelProto:
    """The whole model (pre-processing to pasted masks, or mask probabilities) as one ONNX
    model."""
    mask_output = default_mask_output(model, mask_output)
    check_exportable(model, opset, mask_output)
    info = info_for(model.cfg, mask_output)
    networks = export_networks(model, opset)
    g = GraphBuilder(opset)
    outputs = _glue(g, model, info)
    inputs = [value_info("images", FLOAT, ["batch", 3, "height", "width"]),
              value_info("image_sizes", INT64, ["batch", 2]),
              value_info("score_threshold", FLOAT, [])]
    if mask_output == "pasted":
        inputs.append(value_info("mask_threshold", FLOAT, []))
    available = {i.name for i in inputs} | {t.name for t in g.initializers}
    available |= {t.name for t in networks.graph.initializer}
    nodes = toposort([*g.nodes, *networks.graph.node], available)
    graph = helper.make_graph(nodes, "maskrcnn", inputs, outputs,
                              initializer=[*networks.graph.initializer, *g.initializers])
    opsets = [o for o in networks.opset_import if o.domain not in ("", "ai.onnx")]
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *opsets],
                              producer_name="maskrcnn", producer_version=package_version)
    proto.ir_version = min(networks.ir_version, onnx.IR_VERSION)
    proto.functions.extend(networks.functions)
    helper.set_model_props(proto, to_strings(info, package_version))
    onnx.checker.check_model(proto)
    return proto


def _glue(g: GraphBuilder, model: MaskRCNN, info: ExportInfo) -> list[onnx.ValueInfoProto]:
    """Everything around the networks; returns the graph outputs."""
    cfg = model.cfg
    resized = graph_resize.resized_sizes(g, "image_sizes", cfg.input)  # [B, 2]
    normalized = graph_input.normalize(g, "images", cfg.input)
    canvas = graph_input.resize_and_pad(g, normalized, "image_sizes", resized,
                                        cfg.input.size_divisible)
    g.op_named("Identity", [canvas], "canvas")
    resized_f = g.cast(resized, FLOAT)
    heights = g.gather(resized_f, np.array([0], np.int64), axis=1)  # [B, 1]
    widths = g.gather(resized_f, np.array([1], np.int64), axis=1)

    strides = model.backbone.strides
    levels = range(len(strides))
    scales = model.roi_heads.box_pooler.scales
    pooled_levels = [f"feature_{l}" for l in range(len(scales))]
    proposals, proposal_valid = graph_rpn.proposals(
        g, cfg.rpn, cfg.anchors, strides, [f"feature_{l}" for l in levels],
        [f"rpn_logits_{l}" for l in levels], [f"rpn_deltas_{l}" for l in levels],
        "canvas", heights, widths)
    # named for inspection (e.g. as extra outputs when debugging a runtime)
    proposals = g.op_named("Identity", [proposals], "proposals")
    proposal_valid = g.op_named("Identity", [proposal_valid], "proposal_valid")
    heads = cfg.roi_heads
    channels = model.backbone.out_channels
    rois = g.reshape(proposals, np.array([-1, 4], np.int64))  # [B*P, 4]
    image_of_roi = g.reshape(g.op("Expand", g.unsqueeze(g.arange(g.dim(proposals, 0)), [1]),
                                  g.shape(proposals, 0, 2)), np.array([-1], np.int64))
    g.op_named("Identity", [graph_heads.roi_align_levels(
        g, heads, pooled_levels, scales, channels, rois, image_of_roi,
        heads.box_pooler_resolution)], "box_pooled")
    boxes, scores, labels, batch_index = graph_heads.box_detections(
        g, heads, "box_logits", "box_deltas", proposals, proposal_valid, heights, widths,
        "score_threshold")
    g.op_named("Identity", [graph_heads.roi_align_levels(
        g, heads, pooled_levels, scales, channels, boxes, batch_index,
        heads.mask_pooler_resolution)], "mask_pooled")
    probs = graph_heads.mask_probabilities(g, heads, "mask_logits", labels)  # [N, M, M]
    boxes = graph_input.boxes_to_original(g, boxes, batch_index, "image_sizes", resized)

    mask_size = 2 * heads.mask_pooler_resolution
    if info.mask_output == "pasted":
        masks = graph_paste.paste_masks(g, probs, boxes, batch_index, "image_sizes",
                                        g.shape("images", 2, 4), "mask_threshold", mask_size)
        mask_info = value_info("masks", BOOL, ["num_detections", "height", "width"])
    else:
        masks = probs
        mask_info = value_info("masks", FLOAT, ["num_detections", mask_size, mask_size])
    for value, name in ((boxes, "boxes"), (scores, "scores"), (labels, "labels"),
                        (batch_index, "batch_index"), (masks, "masks")):
        g.op_named("Identity", [value], name)
    return [value_info("boxes", FLOAT, ["num_detections", 4]),
            value_info("scores", FLOAT, ["num_detections"]),
            value_info("labels", INT64, ["num_detections"]),
            value_info("batch_index", INT64, ["num_detections"]), mask_info]


def export(model: MaskRCNN, path: str | os.PathLike, format: str = "onnx", *,
           opset: int = DEFAULT_OPSET, mask_output: str | None = None) -> list[Path]:
    """Write the model as `format` ("onnx": one .onnx file; "openvino": .xml + .bin) and
    return the files written. The model is not changed."""
    from .. import __version__

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {FORMATS}")
    proto = build_onnx(model, opset, mask_output, __version__)
    path = Path(path)
    if format == "onnx":
        atomic_write(path, lambda f: f.write(proto.SerializeToString()), binary=True)
        return [path]
    return save_openvino(proto, path)


def save_openvino(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """Convert an exported ONNX model to OpenVINO IR (float32 weights); the metadata lands
    in rt_info["framework"]. `path` is the .xml (a .bin of the same name goes beside it)."""
    import openvino as ov

    xml = path if path.suffix == ".xml" else path.with_suffix(".xml")
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml.parent, prefix=".export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(proto.SerializeToString())
        ov_model = ov.convert_model(str(onnx_path))  # metadata_props -> rt_info["framework"]
        ov.save_model(ov_model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        os.replace(Path(tmp) / "model.bin", xml.with_suffix(".bin"))
        os.replace(Path(tmp) / "model.xml", xml)
    return [xml, xml.with_suffix(".bin")]
