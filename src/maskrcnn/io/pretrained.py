"""ImageNet bodies for `backbone.pretrained`: read the file (a URL through torch.hub's cache),
map it onto our ResNet body keys, check that it fits the model, load it.

Formats, recognised from their content:
- torchvision ResNet state_dicts (`conv1.weight`, `layer1.0.conv1.weight`, ...; `fc.*`
  ignored), also under "state_dict" or "model";
- MSRA's ImageNet ResNets as detectron2 uses them (`ImageNetPretrained/MSRA/R-50.pkl`,
  `R-101.pkl`): plain pickles of numpy arrays in Caffe2 names (`conv1_w`, `res_conv1_bn_s`,
  `res2_0_branch2a_w`, `res2_0_branch2a_bn_s` / `_bn_b`, `res2_0_branch1_w`; `pred_*` is
  the classifier), at the top level or under "blobs" / "model". Their BatchNorm is folded
  into a scale and shift (mean 0, variance 1 here, as detectron2 loads them); they were
  trained with the stride in each bottleneck's 1x1 conv on BGR 0-255 input minus the mean,
  so the model must say `backbone.stride_in_1x1` and that input (the detectron2 preset);
- detectron2-named bodies (`stem.conv1.weight`, `res2.0.conv1.norm.weight`, e.g. from
  detectron2's tools/convert-torchvision-to-d2.py), in {"model": ..., "__author__": ...}.
Pickles are read by io/restricted_pickle.py (numpy arrays only), the rest by torch.load
with weights_only=True.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ..config import InputConfig, ModelConfig
from . import restricted_pickle as rp
from .detectron2_weights import detectron2_body_key, fill_missing_norm_statistics

MSRA = "MSRA (Caffe2)"
_DETECTRON2_BGR_MEAN = (103.530, 116.280, 123.675)


def build_pretrained_model(cfg: ModelConfig):
    """build_model(cfg), then the ImageNet body of cfg.backbone.pretrained (if set) loaded
    into it. FileNotFoundError / ValueError (naming the file) when it cannot be used."""
    from ..modeling import build_model

    model = build_model(cfg)
    if cfg.backbone.pretrained:
        load_pretrained_body(model.backbone, cfg.backbone.pretrained, cfg.input,
                             res5=getattr(model.roi_heads, "res5", None))
    return model


def load_pretrained_body(backbone: nn.Module, path_or_url: str,
                         input_cfg: InputConfig | None = None,
                         res5: nn.Module | None = None) -> None:
    """Load an ImageNet ResNet (formats in the module docstring) into `backbone.body`, and
    its `layer4.*` into `res5` when given (backbone.kind c4: the RoI heads' res5).

    `path_or_url`: a local file, or a URL downloaded once into torch.hub's cache.
    input_cfg: the model's input settings, checked against what the body was trained with
    (MSRA bodies: BGR 0-255 minus the mean); None skips that check.
    Raises FileNotFoundError for a missing file and ValueError naming the file and the first
    offending key (or the settings to change) when it does not fit; loads nothing then.
    """
    state, kind = read_pretrained_body(path_or_url)
    if kind == MSRA:
        _check_msra_settings(backbone, input_cfg, path_or_url)
    expected = {k: v for k, v in backbone.body.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    if res5 is not None:
        expected.update({f"layer4.{k}": v for k, v in res5.state_dict().items()
                         if not k.endswith("num_batches_tracked")})
    for key, value in expected.items():
        if key not in state:
            raise ValueError(f"{path_or_url}: not a matching ResNet state_dict: "
                             f"missing key {key!r}")
        if state[key].shape != value.shape:
            raise ValueError(f"{path_or_url}: shape mismatch at {key!r}: file has "
                             f"{tuple(state[key].shape)}, model has {tuple(value.shape)}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ValueError(f"{path_or_url}: not a matching ResNet state_dict: "
                         f"unexpected key {unexpected[0]!r}")
    if res5 is not None:
        res5.load_state_dict({k[len("layer4."):]: v for k, v in state.items()
                              if k.startswith("layer4.")}, strict=False)
        state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    backbone.body.load_state_dict(state, strict=False)


def read_pretrained_body(path_or_url: str) -> tuple[dict[str, Tensor], str]:
    """(our body state_dict, the format: "torchvision", MSRA or "detectron2") of a file."""
    data = _read(path_or_url)
    if isinstance(data, Mapping):
        caffe2 = _caffe2_blobs(data)
        if caffe2 is not None:
            return _convert_caffe2(caffe2, path_or_url), MSRA
        model = data.get("model")
        if isinstance(model, Mapping) and any(str(k).startswith("stem.") for k in model):
            return _convert_detectron2(model, path_or_url), "detectron2"
        for wrapper in ("state_dict", "model"):
            if isinstance(data.get(wrapper), Mapping):
                data = data[wrapper]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()
    ):
        raise ValueError(f"{path_or_url}: not a state_dict of tensors (got {type(data)})")
    state = {k: v for k, v in data.items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    return state, "torchvision"


def _read(path_or_url: str) -> Any:
    """A local file's (or a cached URL's) contents: restricted unpickler or torch.load."""
    path = _cached_download(path_or_url) if "://" in path_or_url else path_or_url
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {path_or_url}")
    if rp.is_plain_pickle(path):
        from .weights import read_plain_pickle

        return read_plain_pickle(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"{path_or_url}: cannot read as a PyTorch checkpoint: {err}") from err


def _cached_download(url: str) -> str:
    """The file of `url` in torch.hub's cache (`<hub dir>/checkpoints/<name>`), fetched once,
    as torch.hub.load_state_dict_from_url caches (it cannot read .pkl files itself)."""
    directory = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(directory, exist_ok=True)
    cached = os.path.join(directory, os.path.basename(urlparse(url).path))
    if not os.path.isfile(cached):
        kwargs: dict[str, Any] = {}
        if "progress" in inspect.signature(torch.hub.download_url_to_file).parameters:
            kwargs["progress"] = True
        torch.hub.download_url_to_file(url, cached, **kwargs)
    return cached


def _caffe2_blobs(data: Mapping) -> Mapping | None:
    for candidate in (data.get("blobs"), data.get("model"), data):
        if isinstance(candidate, Mapping) and "conv1_w" in candidate:
            return candidate
    return None


# Caffe2 blob names: <module>[_bn]_<param>, module conv1 / res_conv1 (the stem) or
# res<s>_<b>_branch1 (shortcut) / _branch2a..c (conv1..3); renamed as detectron2 renames them.
_CAFFE2_NAME = re.compile(
    r"^(?:(?P<stem>conv1|res_conv1)|(?P<stage>res\d)_(?P<block>\d+)_branch(?P<branch>1|2[abc]))"
    r"(?P<bn>_bn)?_(?P<param>w|b|s|rm|riv)$"
)
_CAFFE2_PARAMS = {False: {"w": "weight", "b": "bias"},
                  True: {"s": "norm.weight", "b": "norm.bias", "rm": "norm.running_mean",
                         "riv": "norm.running_var"}}
_CAFFE2_SKIPPED = re.compile(r"^(pred_[wb]|fc\d*_[wb]|.*_momentum)$")  # classifier, solver


def caffe2_body_key(name: str) -> str | None:
    """detectron2's body name for an MSRA/Caffe2 blob (`res2_0_branch2a_bn_s` ->
    `res2.0.conv1.norm.weight`, `res_conv1_bn_b` -> `stem.conv1.norm.bias`); None when it is
    not a body blob."""
    match = _CAFFE2_NAME.match(name)
    if match is None or (match["stem"] is not None and (match["stem"] == "res_conv1")
                         != (match["bn"] is not None)):
        return None
    param = _CAFFE2_PARAMS[match["bn"] is not None].get(match["param"])
    if param is None:
        return None
    if match["stem"] is not None:
        return f"stem.conv1.{param}"
    branch = match["branch"]
    conv = "shortcut" if branch == "1" else f"conv{'abc'.index(branch[1]) + 1}"
    return f"{match['stage']}.{match['block']}.{conv}.{param}"


def _convert_caffe2(blobs: Mapping, where: str) -> dict[str, Tensor]:
    renamed = {}
    for name, value in blobs.items():
        if _CAFFE2_SKIPPED.match(str(name)):
            continue
        key = caffe2_body_key(str(name))
        if key is None:
            raise ValueError(f"{where}: not an MSRA ResNet body: unexpected blob {name!r}")
        renamed[key] = value
    return _convert_detectron2(renamed, where)


_BODY_SKIPPED = ("linear.", "fc.", "stem.fc.")  # classifiers (detectron2 / converted)


def _convert_detectron2(model: Mapping, where: str) -> dict[str, Tensor]:
    state = {}
    for name, value in model.items():
        if str(name).startswith(_BODY_SKIPPED) or str(name).endswith("num_batches_tracked"):
            continue
        key = detectron2_body_key(str(name))
        if key is None:
            raise ValueError(f"{where}: not a ResNet body: unexpected key {name!r}")
        try:
            state[key] = rp.to_tensor(value)
        except TypeError as err:
            raise ValueError(f"{where}: {name!r} is {err}") from None
    fill_missing_norm_statistics(state)
    return state


def _check_msra_settings(backbone: nn.Module, input_cfg: InputConfig | None, where: str) -> None:
    """MSRA bodies need the stride in the 1x1 convs and BGR 0-255 input minus the mean."""
    wrong = []
    first = backbone.body.layer2[0]
    if hasattr(first, "conv3") and tuple(first.conv1.stride) != (2, 2):
        wrong.append("backbone.stride_in_1x1=false")
    if input_cfg is not None:
        if input_cfg.channel_order != "BGR":
            wrong.append(f"input.channel_order={input_cfg.channel_order}")
        if input_cfg.pixel_scale != 255.0:
            wrong.append(f"input.pixel_scale={input_cfg.pixel_scale:g}")
        if any(abs(s - 1.0) > 1e-6 for s in input_cfg.pixel_std):
            wrong.append(f"input.pixel_std={list(input_cfg.pixel_std)}")
        if any(abs(m - d) > 2.0 for m, d in zip(input_cfg.pixel_mean, _DETECTRON2_BGR_MEAN)):
            wrong.append(f"input.pixel_mean={list(input_cfg.pixel_mean)}")
    if wrong:
        raise ValueError(
            f"{where}: an MSRA ImageNet body needs backbone.stride_in_1x1=true and BGR 0-255 "
            f"input minus the mean (input.channel_order=BGR, input.pixel_scale=255, "
            f"input.pixel_mean={list(_DETECTRON2_BGR_MEAN)}, input.pixel_std=[1, 1, 1]); this "
            f"model has {', '.join(wrong)}: use --preset detectron2_r50_fpn (or --set those)")
