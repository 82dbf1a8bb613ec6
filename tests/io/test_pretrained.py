"""backbone.pretrained: ImageNet bodies (torchvision state_dicts, MSRA/Caffe2 .pkl,
detectron2-named bodies) read by maskrcnn.io.pretrained."""

from __future__ import annotations

import copy
import pickle
import re

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close

from maskrcnn.config import BackboneConfig, ModelConfig, preset
from maskrcnn.io.pretrained import (
    build_pretrained_model,
    caffe2_body_key,
    load_pretrained_body,
    read_pretrained_body,
)
from maskrcnn.modeling.backbone import FrozenBatchNorm2d, build_backbone

# ------------------------------------------------------------------ torchvision bodies


def test_load_pretrained_body_from_local_file(tmp_path):
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for module in imagenet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet.state_dict(), path)  # includes fc.* and num_batches_tracked
    backbone = build_backbone(BackboneConfig(depth=18, fpn_channels=64))
    load_pretrained_body(backbone, str(path))
    body_state = backbone.body.state_dict()
    for key, value in imagenet.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            assert key not in body_state
        else:
            assert_close(body_state[key], value, msg=key)
    # The trainable_layers freeze survives loading.
    assert not backbone.body.conv1.weight.requires_grad
    assert backbone.body.layer4[0].conv1.weight.requires_grad

    # Through build_pretrained_model with cfg.backbone.pretrained.
    cfg = ModelConfig(backbone=BackboneConfig(depth=18, fpn_channels=64, pretrained=str(path)))
    cfg.roi_heads.representation_size, cfg.roi_heads.mask_head_channels = 64, 32
    built = build_pretrained_model(cfg)
    assert_close(built.backbone.body.bn1.running_mean, imagenet.bn1.running_mean)


def test_load_pretrained_body_from_url_uses_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    imagenet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-url.pth"
    torch.save(imagenet.state_dict(), path)
    backbone = build_backbone(BackboneConfig(depth=18, fpn_channels=64))
    load_pretrained_body(backbone, path.as_uri())
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / path.name).is_file()
    assert_close(backbone.body.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight)


def test_load_pretrained_body_errors(tmp_path):
    backbone = build_backbone(BackboneConfig(depth=18, fpn_channels=64))
    before = copy.deepcopy(backbone.body.state_dict())
    good = torchvision.models.resnet18(weights=None).state_dict()

    bad_shape = dict(good)
    bad_shape["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(bad_shape, tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError, match=r"bad_shape\.pth.*layer2\.0\.conv1\.weight"):
        load_pretrained_body(backbone, str(tmp_path / "bad_shape.pth"))

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match=r"r50\.pth.*'layer1\.0\.conv1\.weight'"):
        load_pretrained_body(backbone, str(tmp_path / "r50.pth"))

    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth.*missing key 'conv1\.weight'"):
        load_pretrained_body(backbone, str(tmp_path / "other.pth"))

    extra = dict(good, **{"layer5.0.conv1.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra\.pth.*unexpected key 'layer5\.0\.conv1"):
        load_pretrained_body(backbone, str(tmp_path / "extra.pth"))

    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth.*not a state_dict"):
        load_pretrained_body(backbone, str(tmp_path / "list.pth"))

    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        load_pretrained_body(backbone, str(tmp_path / "garbage.pth"))

    (tmp_path / "code.pkl").write_bytes(pickle.dumps({"conv1_w": print}))
    with pytest.raises(ValueError, match=r"code\.pkl: refused to unpickle builtins\.print"):
        load_pretrained_body(backbone, str(tmp_path / "code.pkl"))

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained_body(backbone, str(tmp_path / "missing.pth"))
    # Nothing was loaded by the failed attempts.
    assert_close(backbone.body.state_dict(), before, rtol=0, atol=0)


# ------------------------------------------------------------------ MSRA (Caffe2) bodies


def _caffe2_name(key: str) -> str | None:
    """Our body key -> MSRA blob name (None for the running statistics, which MSRA folds)."""
    if key.endswith(("running_mean", "running_var")):
        return None
    suffix = {"weight": "s", "bias": "b"}
    if key == "conv1.weight":
        return "conv1_w"
    match = re.match(r"^bn1\.(weight|bias)$", key)
    if match:
        return f"res_conv1_bn_{suffix[match[1]]}"
    match = re.match(r"^layer(\d)\.(\d+)\.(conv|bn)(\d)\.(weight|bias)$", key)
    if match:
        branch = f"res{int(match[1]) + 1}_{match[2]}_branch2{'abc'[int(match[4]) - 1]}"
        return f"{branch}_w" if match[3] == "conv" else f"{branch}_bn_{suffix[match[5]]}"
    match = re.match(r"^layer(\d)\.(\d+)\.downsample\.([01])\.(weight|bias)$", key)
    branch = f"res{int(match[1]) + 1}_{match[2]}_branch1"
    return f"{branch}_w" if match[3] == "0" else f"{branch}_bn_{suffix[match[4]]}"


def _msra_blobs(depth: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    body = build_backbone(BackboneConfig(depth=depth, fpn_channels=32)).body
    blobs = {}
    for key, value in body.state_dict().items():
        name = _caffe2_name(key)
        if name is not None:
            blobs[name] = (0.5 + torch.rand(value.shape, generator=generator)).numpy()
    blobs["pred_w"] = np.zeros((1000, 2048), np.float32)  # the ImageNet classifier
    blobs["pred_b"] = np.zeros((1000,), np.float32)
    blobs["res2_0_branch2a_w_momentum"] = np.zeros((1,), np.float32)
    return blobs


def _write(path, obj, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _detectron2_cfg(path) -> ModelConfig:
    cfg = preset("detectron2_r50_fpn")
    cfg.backbone.fpn_channels = 32
    cfg.roi_heads.num_classes = 3
    cfg.roi_heads.representation_size = 64
    cfg.roi_heads.mask_head_channels = 32
    cfg.backbone.pretrained = str(path)
    return cfg


def test_caffe2_names():
    assert caffe2_body_key("res_conv1_bn_s") == "stem.conv1.norm.weight"
    assert caffe2_body_key("res4_5_branch2c_bn_b") == "res4.5.conv3.norm.bias"
    assert caffe2_body_key("res3_0_branch1_w") == "res3.0.shortcut.weight"
    assert caffe2_body_key("pred_w") is None and caffe2_body_key("res_conv1_w") is None


@pytest.mark.parametrize("wrapper", ["top", "blobs"])
def test_msra_body_loads_with_stride_in_1x1(tmp_path, wrapper):
    blobs = _msra_blobs()
    path = tmp_path / "R-50.pkl"
    _write(path, blobs if wrapper == "top" else {"blobs": blobs})
    model = build_pretrained_model(_detectron2_cfg(path))
    body = model.backbone.body
    assert tuple(body.layer3[0].conv1.stride) == (2, 2)  # stride_in_1x1 from the preset
    assert torch.equal(body.conv1.weight, torch.from_numpy(blobs["conv1_w"]))
    assert torch.equal(body.bn1.weight, torch.from_numpy(blobs["res_conv1_bn_s"]))
    assert torch.equal(body.layer1[0].downsample[1].bias,
                       torch.from_numpy(blobs["res2_0_branch1_bn_b"]))
    assert torch.equal(body.layer4[2].conv2.weight, torch.from_numpy(blobs["res5_2_branch2b_w"]))
    assert torch.equal(body.layer3[5].bn3.weight, torch.from_numpy(blobs["res4_5_branch2c_bn_s"]))
    for module in body.modules():  # folded BN: scale and shift only, as detectron2 loads it
        if isinstance(module, FrozenBatchNorm2d):
            assert not module.running_mean.any() and torch.equal(
                module.running_var, torch.ones_like(module.running_var))
    assert not body.layer1[0].conv1.weight.requires_grad  # trainable_layers 3 still holds
    assert body.layer2[0].conv1.weight.requires_grad


def test_msra_body_needs_the_detectron2_settings(tmp_path):
    path = tmp_path / "R-50.pkl"
    _write(path, _msra_blobs(), protocol=2)
    cfg = _detectron2_cfg(path)
    cfg.input, cfg.backbone.stride_in_1x1 = preset("torchvision_r50_fpn").input, False
    with pytest.raises(ValueError) as info:
        build_pretrained_model(cfg)
    message = str(info.value)
    assert "\n" not in message and "R-50.pkl" in message
    for setting in ("backbone.stride_in_1x1=false", "input.channel_order=RGB",
                    "input.pixel_scale=1", "--preset detectron2_r50_fpn"):
        assert setting in message, message
    # only the stride wrong: named alone
    cfg = _detectron2_cfg(path)
    cfg.backbone.stride_in_1x1 = False
    with pytest.raises(ValueError, match=r"this model has backbone\.stride_in_1x1=false:"):
        build_pretrained_model(cfg)


def test_msra_body_of_another_depth_names_the_key(tmp_path):
    path = tmp_path / "R-101.pkl"
    _write(path, _msra_blobs(depth=101))
    with pytest.raises(ValueError, match=r"R-101\.pkl.*unexpected key 'layer3\.6\."):
        build_pretrained_model(_detectron2_cfg(path))


def test_detectron2_named_body(tmp_path):
    """A body in detectron2's names (tools/convert-torchvision-to-d2.py output)."""
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    renamed = {}
    for key, value in imagenet.items():
        if key.endswith("num_batches_tracked"):
            continue
        new = key if "layer" in key else "stem." + key
        for t in (1, 2, 3, 4):
            new = new.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            new = new.replace(f"bn{t}", f"conv{t}.norm")
        new = new.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        renamed[new] = value.numpy()
    path = tmp_path / "r18.pkl"
    _write(path, {"model": renamed, "__author__": "torchvision", "matching_heuristics": True})
    state, kind = read_pretrained_body(str(path))
    assert kind == "detectron2"
    expected = {k: v for k, v in imagenet.items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    backbone = build_backbone(BackboneConfig(depth=18, fpn_channels=32))
    load_pretrained_body(backbone, str(path))
    assert torch.equal(backbone.body.layer2[0].downsample[1].running_var,
                       imagenet["layer2.0.downsample.1.running_var"])


def test_whole_detectron2_model_as_pretrained_says_so(tmp_path):
    from maskrcnn.engine.trainer import _pretrained_error
    from maskrcnn.io.detectron2_weights import to_detectron2_state_dict
    from maskrcnn.modeling import build_model

    cfg = _detectron2_cfg(tmp_path / "model_final.pkl")
    cfg.backbone.depth = 18
    arrays = {k: v.numpy() for k, v in to_detectron2_state_dict(
        build_model(cfg).state_dict()).items()}
    _write(tmp_path / "model_final.pkl", {"model": arrays, "__author__": "Detectron2 Model Zoo"})
    with pytest.raises(ValueError) as info:
        build_pretrained_model(cfg)
    message = str(_pretrained_error(info.value, cfg.backbone.pretrained))
    assert "model_final.pkl" in message and "whole Mask R-CNN" in message
