"""detectron2 Mask R-CNN weights: model-zoo `.pkl` files ({"model": {name: numpy array},
"__author__", ...}, read by io/restricted_pickle.py) and DetectionCheckpointer `.pth` files
({"model": {name: tensor}, "iteration", ...}, read by torch.load weights_only), recognised
from their keys and mapped onto the detectron2 preset.

Key names (detectron2 -> ours):
- `backbone.bottom_up.stem.conv1.{weight,norm.*}` -> `backbone.body.{conv1.weight,bn1.*}`
- `backbone.bottom_up.res{s}.{b}.conv{i}.{weight,norm.*}` -> `backbone.body.layer{s-1}.{b}.
  {conv{i}.weight,bn{i}.*}`; `...shortcut.{weight,norm.*}` -> `...downsample.{0.weight,1.*}`
- `backbone.fpn_{lateral,output}{l}.*` -> `backbone.fpn.{lateral,output}_convs.{l-2}.*`
- `proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}.*` -> `rpn.head.*`
- `roi_heads.box_head.fc{1,2}.*` -> same; `roi_heads.box_predictor.*` -> `roi_heads.box_head.*`
- `roi_heads.mask_head.mask_fcn{i}.*` -> `roi_heads.mask_head.convs.{i-1}.*`; `deconv`,
  `predictor` -> same.
Layouts: detectron2's `cls_score` has K + 1 rows with background LAST, ours background
first; its `bbox_pred` has 4K rows (no background slot), ours 4(K + 1); its class-specific
mask predictor K channels, ours K + 1. The background slots we add are zeros (never read).
`pixel_mean` / `pixel_std` (older files) set the input config; `anchor_generator.cell_anchors`
(older files) are recomputed from the config; FrozenBN statistics missing from a file are
mean 0 / variance 1, as detectron2 fills them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig, preset
from .restricted_pickle import to_tensor
from .weights import ModelWeights, WeightsError

ORIGIN = "detectron2"
_MARKERS = ("backbone.bottom_up.stem.conv1.weight", "roi_heads.box_predictor.cls_score.weight")
_IGNORED = re.compile(r"^(pixel_mean|pixel_std|proposal_generator\.anchor_generator\..*"
                      r"|.*\.num_batches_tracked)$")
_BODY_RULES = [  # detectron2 body key (no prefix) -> ours
    (r"^stem\.conv1\.weight$", "conv1.weight"),
    (r"^stem\.conv1\.norm\.(\w+)$", r"bn1.\1"),
    (r"^res([2-5])\.(\d+)\.conv(\d)\.weight$", r"layer{\1}.\2.conv\3.weight"),
    (r"^res([2-5])\.(\d+)\.conv(\d)\.norm\.(\w+)$", r"layer{\1}.\2.bn\3.\4"),
    (r"^res([2-5])\.(\d+)\.shortcut\.weight$", r"layer{\1}.\2.downsample.0.weight"),
    (r"^res([2-5])\.(\d+)\.shortcut\.norm\.(\w+)$", r"layer{\1}.\2.downsample.1.\3"),
]
_HEAD_RULES = [  # detectron2 key -> ours, outside the body
    (r"^backbone\.fpn_lateral([2-5])\.(.+)$", r"backbone.fpn.lateral_convs.{\1}.\2"),
    (r"^backbone\.fpn_output([2-5])\.(.+)$", r"backbone.fpn.output_convs.{\1}.\2"),
    (r"^proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(weight|bias)$",
     r"rpn.head.\1.\2"),
    (r"^roi_heads\.box_head\.(fc\d)\.(weight|bias)$", r"roi_heads.box_head.\1.\2"),
    (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$",
     r"roi_heads.box_head.\1.\2"),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$", r"roi_heads.mask_head.convs.{\1}.\2"),
    (r"^roi_heads\.mask_head\.(deconv|predictor)\.(weight|bias)$", r"roi_heads.mask_head.\1.\2"),
]
# {n} in a replacement: a stage / level / conv number, shifted to our 0- or 1-based index
_SHIFT = {"layer": -1, "lateral_convs.": -2, "output_convs.": -2, "convs.": -1}


def _apply(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, replacement in rules:
        match = re.match(pattern, key)
        if match:
            new = match.expand(replacement)
            return re.sub(r"(layer|lateral_convs\.|output_convs\.|convs\.)\{(\d+)\}",
                          lambda m: f"{m[1]}{int(m[2]) + _SHIFT[m[1]]}", new)
    return None


def detectron2_body_key(key: str) -> str | None:
    """Our ResNet body key for a detectron2 body key (`res2.0.conv1.norm.weight` ->
    `layer1.0.bn1.weight`); None when it is not one."""
    return _apply(_BODY_RULES, key)


def fill_missing_norm_statistics(body_state: dict[str, Tensor]) -> None:
    """Add running_mean 0 / running_var 1 for every `bn*`/`downsample.1` weight without them
    (Caffe2 bodies store only the folded scale and shift; detectron2 fills the same)."""
    for key in [k for k in body_state if k.endswith(".weight")]:
        prefix = key[: -len("weight")]
        is_norm = re.search(r"(^|\.)(bn\d|downsample\.1)\.$", prefix) is not None
        if is_norm and prefix + "running_mean" not in body_state:
            body_state[prefix + "running_mean"] = torch.zeros_like(body_state[key])
            body_state[prefix + "running_var"] = torch.ones_like(body_state[key])


def model_dict(data: dict[str, Any]) -> dict[str, Any] | None:
    """The {name: array/tensor} of a detectron2 Mask R-CNN file, or None if it is not one."""
    model = data.get("model")
    if not isinstance(model, dict) or not all(k in model for k in _MARKERS):
        return None
    if not any(str(k).startswith("roi_heads.mask_head.") for k in model):
        return None
    return model


def is_detectron2_maskrcnn(data: dict[str, Any]) -> bool:
    return model_dict(data) is not None


def convert_detectron2_state_dict(model: dict[str, Any], path: Any = "detectron2 weights"
                                  ) -> dict[str, Tensor]:
    """Our state_dict for a detectron2 Mask R-CNN FPN {name: array or tensor}: keys renamed,
    class layouts converted (module docstring). WeightsError naming the file and the first
    key without a counterpart (C4, cascade, GN, keypoint models ...)."""
    converted: dict[str, Tensor] = {}
    body: dict[str, Tensor] = {}
    for key, value in model.items():
        if _IGNORED.match(key):
            continue
        try:
            tensor = to_tensor(value)
        except TypeError as err:
            raise WeightsError(f"{path}: detectron2 key {key!r} is {err}") from None
        if key.startswith("backbone.bottom_up."):
            ours = detectron2_body_key(key[len("backbone.bottom_up."):])
            if ours is not None:
                body[ours] = tensor
                continue
        else:
            ours = _apply(_HEAD_RULES, key)
        if ours is None:
            raise WeightsError(f"{path}: detectron2 key {key!r} has no counterpart here (only "
                               "Mask R-CNN ResNet-FPN models with FrozenBN map)")
        converted[ours] = tensor
    fill_missing_norm_statistics(body)
    converted.update({f"backbone.body.{k}": v for k, v in body.items()})
    _to_background_first(converted, path)
    return converted


def _to_background_first(state: dict[str, Tensor], path: Any) -> None:
    """detectron2's class layouts -> ours, in place (background row / slot / channel first)."""
    num_classes = state["roi_heads.box_head.cls_score.weight"].shape[0] - 1  # K
    for name in ("weight", "bias"):
        score = state[f"roi_heads.box_head.cls_score.{name}"]
        state[f"roi_heads.box_head.cls_score.{name}"] = torch.cat([score[-1:], score[:-1]])
        deltas = state[f"roi_heads.box_head.bbox_pred.{name}"]
        if deltas.shape[0] != 4 * num_classes:
            raise WeightsError(f"{path}: detectron2 bbox_pred has {deltas.shape[0]} outputs, "
                               f"expected 4 x {num_classes} classes (class-agnostic box "
                               "regression does not map)")
        background = torch.zeros_like(deltas[:4])
        state[f"roi_heads.box_head.bbox_pred.{name}"] = torch.cat([background, deltas])
        mask = state.get(f"roi_heads.mask_head.predictor.{name}")
        if mask is not None and mask.shape[0] == num_classes:  # 1: class-agnostic, as it is
            background = torch.zeros_like(mask[:1])
            state[f"roi_heads.mask_head.predictor.{name}"] = torch.cat([background, mask])


def to_detectron2_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of convert_detectron2_state_dict: our Mask R-CNN FPN state_dict under
    detectron2's names and layouts (our background deltas and mask channel are dropped)."""
    inverse = _inverse_rules()
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, make in inverse:
            match = re.match(pattern, key)
            if match:
                out[make(match)] = value.detach().clone()
                break
        else:
            raise ValueError(f"no detectron2 name for {key!r}")
    for name in ("weight", "bias"):
        score = out[f"roi_heads.box_predictor.cls_score.{name}"]
        out[f"roi_heads.box_predictor.cls_score.{name}"] = torch.cat([score[1:], score[:1]])
        out[f"roi_heads.box_predictor.bbox_pred.{name}"] = (
            out[f"roi_heads.box_predictor.bbox_pred.{name}"][4:])
        mask = out[f"roi_heads.mask_head.predictor.{name}"]
        if mask.shape[0] > 1:
            out[f"roi_heads.mask_head.predictor.{name}"] = mask[1:]
    return out


def _inverse_rules() -> list[tuple[str, Any]]:
    body = "backbone.bottom_up."
    return [
        (r"^backbone\.body\.conv1\.weight$", lambda m: body + "stem.conv1.weight"),
        (r"^backbone\.body\.bn1\.(\w+)$", lambda m: body + f"stem.conv1.norm.{m[1]}"),
        (r"^backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight$",
         lambda m: body + f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
        (r"^backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)$",
         lambda m: body + f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
        (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight$",
         lambda m: body + f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
        (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)$",
         lambda m: body + f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
        (r"^backbone\.fpn\.lateral_convs\.(\d)\.(.+)$",
         lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}"),
        (r"^backbone\.fpn\.output_convs\.(\d)\.(.+)$",
         lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}"),
        (r"^rpn\.head\.(\w+)\.(weight|bias)$",
         lambda m: f"proposal_generator.rpn_head.{m[1]}.{m[2]}"),
        (r"^roi_heads\.box_head\.(fc\d)\.(weight|bias)$",
         lambda m: f"roi_heads.box_head.{m[1]}.{m[2]}"),
        (r"^roi_heads\.box_head\.(cls_score|bbox_pred)\.(weight|bias)$",
         lambda m: f"roi_heads.box_predictor.{m[1]}.{m[2]}"),
        (r"^roi_heads\.mask_head\.convs\.(\d+)\.(weight|bias)$",
         lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}"),
        (r"^roi_heads\.mask_head\.(deconv|predictor)\.(weight|bias)$",
         lambda m: f"roi_heads.mask_head.{m[1]}.{m[2]}"),
    ]


_DEPTHS = {  # (bottleneck?, blocks in res2..res5) -> depth
    (False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152,
}


def body_depth(body_keys: list[str], path: Any) -> int:
    """ResNet depth from our body keys (`layer{s}.{b}.conv3` present: bottleneck)."""
    blocks = [0, 0, 0, 0]
    bottleneck = False
    for key in body_keys:
        match = re.match(r"^layer(\d)\.(\d+)\.conv(\d)\.", key)
        if match:
            stage = int(match[1]) - 1
            blocks[stage] = max(blocks[stage], int(match[2]) + 1)
            bottleneck = bottleneck or match[3] == "3"
    depth = _DEPTHS.get((bottleneck, tuple(blocks)))
    if depth is None:
        raise WeightsError(f"{path}: a ResNet with {tuple(blocks)} blocks per stage "
                           f"({'bottleneck' if bottleneck else 'basic'}) has no depth here")
    return depth


def detectron2_config(model: dict[str, Any], state: dict[str, Tensor], path: Any
                      ) -> ModelConfig:
    """The detectron2 preset with what the weights tell: depth, widths, classes, input."""
    cfg = preset("detectron2_r50_fpn")
    prefix = "backbone.body."
    cfg.backbone.depth = body_depth([k[len(prefix):] for k in state if k.startswith(prefix)],
                                    path)
    cfg.backbone.fpn_channels = state["backbone.fpn.lateral_convs.0.weight"].shape[0]
    heads = cfg.roi_heads
    heads.num_classes = state["roi_heads.box_head.cls_score.weight"].shape[0]
    heads.representation_size = state["roi_heads.box_head.fc1.weight"].shape[0]
    heads.mask_head_convs = sum(1 for k in state
                                if re.match(r"^roi_heads\.mask_head\.convs\.\d+\.weight$", k))
    if heads.mask_head_convs:
        heads.mask_head_channels = state["roi_heads.mask_head.convs.0.weight"].shape[0]
    heads.class_agnostic_mask = state["roi_heads.mask_head.predictor.weight"].shape[0] == 1
    if heads.num_classes == 81:
        from ..coco_names import coco_80_classes

        names, ids = coco_80_classes()
        cfg.class_names, cfg.category_ids = ("background", *names), (0, *ids)
    for name in ("pixel_mean", "pixel_std"):
        if name in model:
            values = tuple(float(v) for v in to_tensor(model[name]).flatten().tolist())
            if len(values) != 3:
                raise WeightsError(f"{path}: {name} has {len(values)} values, expected 3")
            setattr(cfg.input, name, values)
    return cfg


def read_detectron2_model(data: dict[str, Any], path: Path) -> ModelWeights | None:
    """The recogniser for io/weights.py: a detectron2 Mask R-CNN file, else None."""
    model = model_dict(data)
    if model is None:
        return None
    state = convert_detectron2_state_dict(model, path)
    return ModelWeights(detectron2_config(model, state, path), state, ORIGIN)
