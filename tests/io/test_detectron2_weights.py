"""detectron2 weight files: model-zoo .pkl (restricted unpickler), checkpointer .pth, the key
and class-layout mapping onto the detectron2 preset."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from maskrcnn.config import preset
from maskrcnn.io.detectron2_weights import (
    convert_detectron2_state_dict,
    detectron2_body_key,
    to_detectron2_state_dict,
)
from maskrcnn.io.restricted_pickle import loads_numpy_pickle
from maskrcnn.io.weights import WeightsError, load_model, read_model_weights
from maskrcnn.modeling import build_model
from maskrcnn.modeling.backbone import FrozenBatchNorm2d


def _d2_config(depth: int = 18, num_classes: int = 4):
    cfg = preset("detectron2_r50_fpn")
    cfg.backbone.depth = depth
    cfg.backbone.fpn_channels = 32
    cfg.roi_heads.num_classes = num_classes
    cfg.roi_heads.representation_size = 64
    cfg.roi_heads.mask_head_channels = 32
    return cfg


def _random_model(cfg, seed: int = 0):
    """Seeded random weights with non-trivial frozen BN statistics and spread scores."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.weight.uniform_(0.3, 0.6)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for name, value in model.named_parameters():
            if name.endswith("bias"):
                value.normal_(0, 0.05)
        model.roi_heads.box_head.cls_score.weight.normal_(0, 0.1)
        model.rpn.head.objectness_logits.weight.mul_(10)
    return model


def _d2_arrays(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in to_detectron2_state_dict(model.state_dict()).items()}


def _write_pkl(path, arrays, protocol=pickle.DEFAULT_PROTOCOL, **extra):
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo", **extra}, f,
                    protocol=protocol)


def _image(seed: int = 1, size=(3, 120, 150)) -> torch.Tensor:
    return torch.rand(size, generator=torch.Generator().manual_seed(seed))


def _small_input(model) -> None:
    model.cfg.input.min_size_test = 128  # the transform reads the shared InputConfig
    model.cfg.input.max_size = 192


def test_detectron2_keys_look_as_expected():
    keys = to_detectron2_state_dict(build_model(_d2_config(depth=50)).state_dict())
    for key in ("backbone.bottom_up.stem.conv1.weight",
                "backbone.bottom_up.stem.conv1.norm.running_var",
                "backbone.bottom_up.res2.0.conv1.weight",
                "backbone.bottom_up.res2.0.shortcut.norm.bias",
                "backbone.bottom_up.res5.2.conv3.norm.weight", "backbone.fpn_lateral2.weight",
                "backbone.fpn_output5.bias", "proposal_generator.rpn_head.conv.weight",
                "proposal_generator.rpn_head.objectness_logits.weight",
                "proposal_generator.rpn_head.anchor_deltas.bias",
                "roi_heads.box_head.fc1.weight", "roi_heads.box_head.fc2.bias",
                "roi_heads.box_predictor.cls_score.weight",
                "roi_heads.box_predictor.bbox_pred.bias",
                "roi_heads.mask_head.mask_fcn1.weight", "roi_heads.mask_head.mask_fcn4.bias",
                "roi_heads.mask_head.deconv.weight", "roi_heads.mask_head.predictor.weight"):
        assert key in keys, key
    assert keys["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4  # K + 1, K = 3
    assert keys["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 12  # 4K
    assert keys["roi_heads.mask_head.predictor.weight"].shape[0] == 3  # K
    assert detectron2_body_key("res4.5.conv2.norm.running_mean") == "layer3.5.bn2.running_mean"


def test_pkl_loads_predicts_and_round_trips(tmp_path):
    cfg = _d2_config()
    ours = _random_model(cfg)
    arrays = _d2_arrays(ours)
    path = tmp_path / "model_final_abc.pkl"
    _write_pkl(path, arrays)

    weights = read_model_weights(path)
    assert weights.origin == "detectron2"
    assert weights.cfg == cfg  # depth, widths, classes read from the keys
    back = to_detectron2_state_dict(weights.state_dict)
    assert sorted(back) == sorted(arrays)
    for key, value in arrays.items():  # exact: nothing but the layout changes
        assert torch.equal(back[key], torch.from_numpy(value)), key

    model = load_model(path)
    for key, value in ours.state_dict().items():
        got = model.state_dict()[key]
        if key.startswith(("roi_heads.box_head.bbox_pred.",)):
            assert torch.equal(got[4:], value[4:]) and not got[:4].any(), key
        elif key.startswith("roi_heads.mask_head.predictor."):
            assert torch.equal(got[1:], value[1:]) and not got[:1].any(), key
        else:
            assert torch.equal(got, value), key
    _small_input(model)
    _small_input(ours)
    image = _image()
    with torch.no_grad():
        got, expected = model.predict([image])[0], ours.predict([image])[0]
    assert got.boxes.shape[0] > 0
    assert got.masks.shape == (got.boxes.shape[0], 120, 150)
    # the background slots never reach an output: detections are identical
    assert torch.equal(got.boxes, expected.boxes) and torch.equal(got.labels, expected.labels)
    assert torch.equal(got.scores, expected.scores) and torch.equal(got.masks, expected.masks)


def test_class_layouts_match_detectron2_semantics():
    """detectron2's class k (background last, no background deltas or mask) is our k + 1."""
    cfg = _d2_config(num_classes=6)
    arrays = {k: torch.from_numpy(v) for k, v in _d2_arrays(_random_model(cfg, seed=3)).items()}
    model = build_model(cfg).eval()
    model.load_state_dict(convert_detectron2_state_dict(arrays))
    torch.manual_seed(4)
    pooled = torch.randn(7, 32, 7, 7)
    with torch.no_grad():
        logits, deltas = model.roi_heads.box_head(pooled)
        x = torch.relu(torch.nn.functional.linear(
            pooled.flatten(1), arrays["roi_heads.box_head.fc1.weight"],
            arrays["roi_heads.box_head.fc1.bias"]))
        x = torch.relu(torch.nn.functional.linear(
            x, arrays["roi_heads.box_head.fc2.weight"], arrays["roi_heads.box_head.fc2.bias"]))
        d2_logits = torch.nn.functional.linear(
            x, arrays["roi_heads.box_predictor.cls_score.weight"],
            arrays["roi_heads.box_predictor.cls_score.bias"])
        d2_deltas = torch.nn.functional.linear(
            x, arrays["roi_heads.box_predictor.bbox_pred.weight"],
            arrays["roi_heads.box_predictor.bbox_pred.bias"])
        masks = model.roi_heads.mask_head(torch.randn(3, 32, 14, 14,
                                                      generator=torch.Generator().manual_seed(5)))
    scores, d2_scores = logits.softmax(-1), d2_logits.softmax(-1)
    k = 5  # K
    assert_close(scores[:, 1:], d2_scores[:, :k], rtol=1e-6, atol=1e-7)
    assert_close(scores[:, 0], d2_scores[:, k], rtol=1e-6, atol=1e-7)
    assert_close(deltas[:, 4:], d2_deltas, rtol=0, atol=0)
    assert masks.shape[1] == k + 1 and not masks[:, 0].any()


def test_coco_classes_and_depth_101_from_the_keys(tmp_path):
    cfg = _d2_config(depth=101, num_classes=81)
    cfg.roi_heads.mask_head_convs = 2
    arrays = _d2_arrays(build_model(cfg))
    arrays["pixel_mean"] = np.array([[[103.53]], [[116.28]], [[123.675]]], dtype=np.float32)
    arrays["proposal_generator.anchor_generator.cell_anchors.0"] = np.zeros((3, 4), np.float32)
    path = tmp_path / "r101.pkl"
    _write_pkl(path, arrays, matching_heuristics=False)
    weights = read_model_weights(path)
    assert weights.cfg.backbone.depth == 101 and weights.cfg.backbone.stride_in_1x1
    assert weights.cfg.roi_heads.mask_head_convs == 2
    assert weights.cfg.class_names[:3] == ("background", "person", "bicycle")
    assert weights.cfg.category_ids[-1] == 90 and len(weights.cfg.category_ids) == 81


def test_checkpointer_pth_is_recognised(tmp_path):
    cfg = _d2_config()
    ours = _random_model(cfg, seed=2)
    path = tmp_path / "model_0004999.pth"
    torch.save({"model": to_detectron2_state_dict(ours.state_dict()), "iteration": 4999,
                "optimizer": {"state": {}, "param_groups": []}}, path)
    model = load_model(path)
    assert torch.equal(model.backbone.body.layer2[0].conv1.weight,
                       ours.backbone.body.layer2[0].conv1.weight)
    # torch's legacy (non-zip) format is a pickle too, but read by torch.load, not as a .pkl
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": to_detectron2_state_dict(ours.state_dict())}, legacy,
               _use_new_zipfile_serialization=False)
    assert torch.equal(load_model(legacy).rpn.head.conv.weight, ours.rpn.head.conv.weight)


def test_missing_frozen_bn_statistics_are_identity(tmp_path):
    cfg = _d2_config()
    arrays = {k: v for k, v in _d2_arrays(_random_model(cfg)).items()
              if not k.endswith(("running_mean", "running_var"))}
    state = convert_detectron2_state_dict(arrays)
    assert torch.equal(state["backbone.body.bn1.running_var"], torch.ones(64))
    assert torch.equal(state["backbone.body.layer3.0.downsample.1.running_mean"],
                       torch.zeros(256))


def test_unmappable_detectron2_model_names_the_key(tmp_path):
    arrays = _d2_arrays(build_model(_d2_config()))
    arrays["roi_heads.res5.0.conv1.weight"] = np.zeros((1,), np.float32)  # a C4 head
    path = tmp_path / "c4.pkl"
    _write_pkl(path, arrays)
    with pytest.raises(WeightsError, match=r"c4\.pkl.*roi_heads\.res5\.0\.conv1\.weight"):
        load_model(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_with_other_globals_is_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "ran"
    arrays = {"backbone.bottom_up.stem.conv1.weight": np.zeros(3, np.float32),
              "evil": _RunsCode(marker)}
    path = tmp_path / "evil.pkl"
    _write_pkl(path, arrays, protocol=protocol)
    with pytest.raises(WeightsError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and "evil.pkl" in message
    assert ("posix.system" in message or "os.system" in message), message
    assert not marker.exists()


def test_other_refused_globals(tmp_path):
    class _Eval:
        def __reduce__(self):
            return (eval, ("1",))

    path = tmp_path / "g.pkl"
    for obj, name in [(_Eval(), "builtins.eval"),
                      (torch.zeros(2), "torch.")]:  # torch tensors belong in torch.save files
        path.write_bytes(pickle.dumps({"model": {"a": obj}}, protocol=4))
        with pytest.raises(WeightsError, match=r"g\.pkl: refused to unpickle " + re.escape(name)):
            load_model(path)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_restricted_unpickler_reads_numpy_as_pickled(protocol):
    from collections import OrderedDict

    data = OrderedDict(a=np.arange(12, dtype=np.float32).reshape(3, 4),
                       b=np.asfortranarray(np.ones((2, 3), np.float64)), c=np.float32(2.5),
                       d=[1, 2.0, "x", (None, True)], e=np.arange(3, dtype=np.int64))
    got = loads_numpy_pickle(pickle.dumps(data, protocol=protocol))
    assert isinstance(got, OrderedDict) and list(got) == list(data)
    for key in ("a", "b", "e"):
        assert got[key].dtype == data[key].dtype and np.array_equal(got[key], data[key])
    assert got["c"] == np.float32(2.5) and got["d"] == data["d"]


def test_python2_latin1_pickle_reads():
    """A protocol-2 pickle as Python 2 wrote numpy arrays (data as a str, numpy.core names)."""
    array = np.arange(4, dtype=np.float32)
    raw = array.tobytes().decode("latin1")
    # hand-written: GLOBAL numpy.core.multiarray _reconstruct, (ndarray, (0,), 'b'), BUILD
    # with (1, shape, dtype('f4'), False, <py2 str>) as pickled by numpy 1.x under Python 2
    py2 = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00"
           b"\x85U\x01b\x87Rq\x02(K\x01K\x04\x85cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R"
           b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x10"
           + raw.encode("latin1") + b"tb.")
    got = loads_numpy_pickle(py2)
    assert got.dtype == np.float32 and np.array_equal(got, array)
