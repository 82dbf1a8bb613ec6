"""torchvision's maskrcnn_resnet50_fpn (v1) and maskrcnn_resnet50_fpn_v2 state_dicts:
recognised from their keys, renamed to ours, described by the torchvision presets
(`torchvision_r50_fpn`, `torchvision_r50_fpn_v2`).

Backbone keys:

torchvision's maskrcnn_resnet50_fpn keys under `backbone.`:
- `backbone.body.*`: identical to ours (same ResNet module names).
- `backbone.fpn.inner_blocks.{i}.0.{weight,bias}` (torchvision >= 0.13, Conv2dNormActivation)
  or `backbone.fpn.inner_blocks.{i}.{weight,bias}` (older): our `backbone.fpn.lateral_convs.{i}.*`.
- `backbone.fpn.layer_blocks.{i}...`: likewise our `backbone.fpn.output_convs.{i}.*`.
- With an FPN norm layer (v2: BatchNorm2d), torchvision's `...blocks.{i}.1.*` is our
  `...convs.{i}.norm.*`.

Head keys of v2 (v1's are in `_HEAD_KEYS`):
- `rpn.head.conv.{i}.0.*`: our `rpn.head.conv.*` for i = 0, `rpn.head.extra_convs.{i-1}.*`.
- `roi_heads.box_head.{i}.0.*` / `.{i}.1.*` (FastRCNNConvFCHead: N conv blocks, Flatten at
  N, Linear at N+1, N+3, ...): our `roi_heads.box_head.convs.{i}.*` / `.convs.{i}.norm.*`,
  and the Linears our `fc1`, `fc2`, ...
- `roi_heads.mask_head.{i}.1.*` (BatchNorm after each mask conv): our
  `roi_heads.mask_head.convs.{i}.norm.*`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig, preset

_FPN_KEY = re.compile(
    r"^backbone\.fpn\.(?P<block>inner_blocks|layer_blocks)\.(?P<level>\d+)\."
    r"(?:(?P<sub>[01])\.)?(?P<param>[A-Za-z_]+)$"
)
_FPN_BLOCK_NAMES = {"inner_blocks": "lateral_convs", "layer_blocks": "output_convs"}


def map_torchvision_backbone_key(key: str) -> str:
    """Our key for a torchvision Mask R-CNN state_dict key under `backbone.`.

    Body keys and keys outside `backbone.fpn.inner_blocks/layer_blocks` are returned unchanged.
    """
    match = _FPN_KEY.match(key)
    if match is None:
        return key
    block = _FPN_BLOCK_NAMES[match["block"]]
    norm = "norm." if match["sub"] == "1" else ""
    return f"backbone.fpn.{block}.{match['level']}.{norm}{match['param']}"


# torchvision key pattern -> our key (after the backbone, mapped by map_torchvision_backbone_key)
_HEAD_KEYS = [
    (r"^rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)$", r"rpn.head.conv.\1"),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness_logits."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.anchor_deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fc1."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fc2."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.box_head."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_heads.mask_head.convs.\1."),
    (r"^roi_heads\.mask_head\.(\d+)\.1\.", r"roi_heads.mask_head.convs.\1.norm."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor."),
]
_RPN_EXTRA_CONV = re.compile(r"^rpn\.head\.conv\.(?P<index>[1-9]\d*)\.0\.(?P<param>\w+)$")
_BOX_HEAD_CONV = re.compile(r"^roi_heads\.box_head\.(?P<index>\d+)\.(?P<sub>[01])\.(?P<param>\w+)$")
_BOX_HEAD_FC = re.compile(r"^roi_heads\.box_head\.(?P<index>\d+)\.(?P<param>weight|bias)$")


def is_torchvision_maskrcnn(state_dict: dict[str, Any]) -> bool:
    return (
        "backbone.body.conv1.weight" in state_dict
        and "roi_heads.box_predictor.cls_score.weight" in state_dict
        and any(k.startswith("roi_heads.mask_predictor.") for k in state_dict)
    )


def is_torchvision_v2(state_dict: dict[str, Any]) -> bool:
    """maskrcnn_resnet50_fpn_v2: a conv box head (FastRCNNConvFCHead) or a 2-conv RPN head."""
    return "roi_heads.box_head.0.0.weight" in state_dict or "rpn.head.conv.1.0.weight" in state_dict


def _old_mask_key(key: str) -> str:
    """torchvision < 0.13 named the mask convs mask_head.mask_fcn{1..4}."""
    match = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(.*)$", key)
    if match:
        return f"roi_heads.mask_head.{int(match.group(1)) - 1}.0.{match.group(2)}"
    return key


def _v2_key(key: str, num_box_convs: int) -> str:
    """Our key for a v2 RPN or box head key (FastRCNNConvFCHead indices); others unchanged."""
    match = _RPN_EXTRA_CONV.match(key)
    if match:
        return f"rpn.head.extra_convs.{int(match['index']) - 1}.{match['param']}"
    match = _BOX_HEAD_CONV.match(key)
    if match:
        norm = "norm." if match["sub"] == "1" else ""
        return f"roi_heads.box_head.convs.{match['index']}.{norm}{match['param']}"
    match = _BOX_HEAD_FC.match(key)
    if match:
        # Flatten at num_box_convs, then (Linear, ReLU) pairs
        fc = (int(match["index"]) - num_box_convs - 1) // 2 + 1
        return f"roi_heads.box_head.fc{fc}.{match['param']}"
    return key


def convert_torchvision_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchvision maskrcnn_resnet50_fpn (v1 or v2) keys to ours (values unchanged).

    v1's BatchNorm `num_batches_tracked` are dropped (our v1 preset freezes the body); v2's
    are kept, as its BatchNorm layers are ours too, and made (0) where a file lacks them.
    """
    v2 = is_torchvision_v2(state_dict)
    num_box_convs = sum(
        1 for k in state_dict if _BOX_HEAD_CONV.match(k) and k.endswith(".0.weight")
    )
    converted = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") and not v2:
            continue
        new_key = _old_mask_key(key)
        if new_key.startswith("backbone."):
            new_key = map_torchvision_backbone_key(new_key)
        elif v2:
            new_key = _v2_key(new_key, num_box_convs)
        for pattern, replacement in _HEAD_KEYS:
            new_key = re.sub(pattern, replacement, new_key)
        converted[new_key] = value
    if v2:
        for key in [k for k in converted if k.endswith(".running_mean")]:
            tracked = key[: -len("running_mean")] + "num_batches_tracked"
            converted.setdefault(tracked, torch.tensor(0, dtype=torch.long))
    return converted


def torchvision_config(state_dict: dict[str, Tensor]) -> ModelConfig:
    """The torchvision preset (v1 or v2, from the keys), with the class count read from the
    weights."""
    cfg = preset("torchvision_r50_fpn_v2" if is_torchvision_v2(state_dict)
                 else "torchvision_r50_fpn")
    cfg.roi_heads.num_classes = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0]
    if cfg.roi_heads.num_classes == 91:
        from ..coco_names import TORCHVISION_COCO_NAMES

        cfg.class_names = tuple(TORCHVISION_COCO_NAMES)
    return cfg
