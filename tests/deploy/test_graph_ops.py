"""Pieces of the export graph on both runtimes against the eager code: the resized size
(exact for every image size), RoiAlign (ONNX Runtime's and OpenVINO's against ours, both
aligned settings; their max mode is not a max of bilinear samples), mask pasting."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from maskrcnn.config import InputConfig
from maskrcnn.deploy import graph_paste, graph_resize
from maskrcnn.deploy.metadata import MAX_SIDE
from maskrcnn.deploy.onnx_builder import BOOL, FLOAT, INT64, GraphBuilder, value_info
from maskrcnn.modeling.transform import InputTransform
from maskrcnn.ops.mask_paste import paste_masks_thresholded
from maskrcnn.ops.roi_align import roi_align

BACKENDS = ["onnxruntime", "openvino"]


def _run(g: GraphBuilder, inputs, outputs, feeds, backend):
    graph = helper.make_graph(g.nodes, "test", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)])
    model.ir_version = 9
    if backend == "onnxruntime":
        import onnxruntime as ort

        return ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled(feeds)
    return [results[port] for port in compiled.outputs]


def _eager_resized(sizes: np.ndarray, cfg: InputConfig) -> np.ndarray:
    """The eager model's arithmetic (InputTransform.resize), size by size."""
    out = []
    for height, width in sizes.tolist():
        scale = min(cfg.min_size_test / min(height, width), cfg.max_size / max(height, width))
        out.append((int(height * scale), int(width * scale)))
    return np.array(out, np.int64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sizes", [(800, 1333), (384, 640), (600, 1000)])
def test_resized_size_is_exact(backend, sizes):
    cfg = InputConfig(min_size_test=sizes[0], max_size=sizes[1])
    g = GraphBuilder(18)
    g.op_named("Identity", [graph_resize.resized_sizes(g, "image_sizes", cfg)], "resized")
    grid = np.stack(np.meshgrid(np.arange(1, 401), np.arange(1, 401)), -1).reshape(-1, 2)
    random = np.random.default_rng(sizes[0]).integers(1, MAX_SIDE + 1, (40000, 2))
    image_sizes = np.concatenate([grid, random]).astype(np.int64)
    got = _run(g, [value_info("image_sizes", INT64, ["B", 2])],
               [value_info("resized", INT64, ["B", 2])], {"image_sizes": image_sizes},
               backend)[0]
    want = _eager_resized(image_sizes, cfg)
    bad = np.nonzero((got != want).any(1))[0]
    assert len(bad) == 0, f"{len(bad)} sizes differ, e.g. {image_sizes[bad[:3]].tolist()}"


def test_eager_resize_follows_the_formula():
    """The formula the test above checks against is what InputTransform.resize does."""
    cfg = InputConfig(min_size_test=800, max_size=1333)
    transform = InputTransform(cfg)
    sizes = np.random.default_rng(0).integers(1, 900, (60, 2))
    sizes[:3] = [[1, 35], [1, 149], [600, 900]]  # float64 rounding cases: 1333 and 1332
    for (height, width), want in zip(sizes.tolist(), _eager_resized(sizes, cfg).tolist()):
        image, _ = transform.resize(torch.zeros(1, height, width), cfg.min_size_test)
        assert list(image.shape[1:]) == want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_runtime_roi_align_matches_ours(backend, aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 30, 40, generator=gen)
    xy = torch.rand(40, 2, generator=gen) * 140
    wh = torch.rand(40, 2, generator=gen) * 60
    wh[:6] = torch.rand(6, 2, generator=gen) * 2  # RoIs under a pixel: torchvision's
    boxes = torch.cat([xy, xy + wh], 1)           # aligned=False makes them 1 x 1
    image = torch.randint(0, 2, (40,), generator=gen)
    want = roi_align(features, torch.cat([image[:, None].float(), boxes], 1), 7, 0.25,
                     sampling_ratio, aligned)
    g = GraphBuilder(18)
    g.op_named("RoiAlign", ["x", "rois", "index"], "y", mode="avg", output_height=7,
               output_width=7, sampling_ratio=sampling_ratio, spatial_scale=0.25,
               coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")
    got = _run(g, [value_info("x", FLOAT, [2, 8, 30, 40]), value_info("rois", FLOAT, ["K", 4]),
                   value_info("index", INT64, ["K"])], [value_info("y", FLOAT, ["K", 8, 7, 7])],
               {"x": features.numpy(), "rois": boxes.numpy(), "index": image.numpy()},
               backend)[0]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pasted_masks_match_ours(backend):
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(12, 28, 28, generator=gen)
    xy = torch.rand(12, 2, generator=gen) * 90 - 10
    boxes = torch.cat([xy, xy + torch.rand(12, 2, generator=gen) * 70 + 0.5], 1)
    image = torch.tensor([0] * 6 + [1] * 6)
    sizes = np.array([[80, 100], [64, 50]], np.int64)
    g = GraphBuilder(18)
    g.op_named("Identity", [graph_paste.paste_masks(
        g, "probs", "boxes", "index", "sizes", np.array([80, 100], np.int64), "threshold",
        28)], "masks")
    got = _run(g, [value_info("probs", FLOAT, ["N", 28, 28]), value_info("boxes", FLOAT, ["N", 4]),
                   value_info("index", INT64, ["N"]), value_info("sizes", INT64, [2, 2]),
                   value_info("threshold", FLOAT, [])],
               [value_info("masks", BOOL, ["N", 80, 100])],
               {"probs": probs.numpy(), "boxes": boxes.numpy(), "index": image.numpy(),
                "sizes": sizes, "threshold": np.array(0.5, np.float32)}, backend)[0]
    for i in range(12):
        height, width = sizes[image[i]]
        want = paste_masks_thresholded(probs[i:i + 1], boxes[i:i + 1], (height, width))[0]
        assert not got[i, height:].any() and not got[i, :, width:].any()
        differ = int((torch.from_numpy(got[i, :height, :width]) ^ want).sum())
        assert differ <= 1, f"mask {i}: {differ} pixels differ"


def test_graph_checker_accepts_the_pieces():
    g = GraphBuilder(18)
    g.op_named("Identity", [graph_resize.resized_sizes(g, "s", InputConfig())], "r")
    graph = helper.make_graph(g.nodes, "t", [value_info("s", INT64, ["B", 2])],
                              [value_info("r", INT64, ["B", 2])], initializer=g.initializers)
    onnx.checker.check_model(helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 18)]), full_check=True)
