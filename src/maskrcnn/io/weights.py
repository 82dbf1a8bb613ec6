"""Weight files: our own checkpoints and torchvision's maskrcnn_resnet50_fpn state_dict.

Every file is read with `torch.load(weights_only=True)`: a checkpoint never runs code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig, config_from_dict, config_to_dict, preset
from .atomic import atomic_write
from .torchvision_keys import map_torchvision_backbone_key

CHECKPOINT_FORMAT = "maskrcnn"
CHECKPOINT_VERSION = 1

# torchvision key pattern -> our key (after the backbone, mapped by map_torchvision_backbone_key)
_TORCHVISION_HEAD_KEYS = [
    (r"^rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)$", r"rpn.head.conv.\1"),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness_logits."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.anchor_deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fc1."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fc2."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.box_head."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_heads.mask_head.convs.\1."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor."),
]


class WeightsError(ValueError):
    """A weight file that cannot be used; the message names the file."""


def read_weight_file(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load with weights_only=True; a clear WeightsError for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and unpickler errors all land here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: not a readable PyTorch weight file ({reason})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def is_torchvision_maskrcnn(state_dict: dict[str, Any]) -> bool:
    return (
        "backbone.body.conv1.weight" in state_dict
        and "roi_heads.box_predictor.cls_score.weight" in state_dict
        and any(k.startswith("roi_heads.mask_predictor.") for k in state_dict)
    )


def _old_mask_key(key: str) -> str:
    """torchvision < 0.13 named the mask convs mask_head.mask_fcn{1..4}."""
    match = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(.*)$", key)
    if match:
        return f"roi_heads.mask_head.{int(match.group(1)) - 1}.0.{match.group(2)}"
    return key


def convert_torchvision_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchvision maskrcnn_resnet50_fpn keys to ours (values unchanged)."""
    converted = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        new_key = _old_mask_key(key)
        if new_key.startswith("backbone."):
            new_key = map_torchvision_backbone_key(new_key)
        for pattern, replacement in _TORCHVISION_HEAD_KEYS:
            new_key = re.sub(pattern, replacement, new_key)
        converted[new_key] = value
    return converted


def torchvision_config(state_dict: dict[str, Tensor]) -> ModelConfig:
    """The torchvision preset, with the class count read from the weights."""
    cfg = preset("torchvision_r50_fpn")
    cfg.roi_heads.num_classes = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0]
    if cfg.roi_heads.num_classes == 91:
        from ..data.coco_names import TORCHVISION_COCO_NAMES

        cfg.class_names = tuple(TORCHVISION_COCO_NAMES)
    return cfg


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, Tensor], path: Any) -> None:
    """load_state_dict(strict) with one readable error naming the file."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} with other shapes (e.g. {wrong[0]})")
    if problems:
        raise WeightsError(f"{path}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Build the model a weight file describes and load it, in eval mode.

    Accepts our checkpoints (config inside) and plain torchvision maskrcnn_resnet50_fpn
    state_dicts (recognised from their keys, mapped onto the torchvision preset).
    """
    from ..modeling import build_model

    data = read_weight_file(path)
    if data.get("format") == CHECKPOINT_FORMAT:
        try:
            cfg = config_from_dict(data["config"])
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(f"{path}: bad config in checkpoint ({err})") from None
        state_dict = data["model"]
    elif is_torchvision_maskrcnn(data):
        cfg = torchvision_config(data)
        state_dict = convert_torchvision_state_dict(data)
    else:
        raise WeightsError(
            f"{path}: neither a maskrcnn checkpoint nor a torchvision "
            "maskrcnn_resnet50_fpn state_dict"
        )
    model = build_model(cfg)
    load_state_dict_checked(model, state_dict, path)
    return model.to(device).eval()


def save_model(model: nn.Module, path: str | os.PathLike, **extra: Any) -> None:
    """Write {format, version, config, model, **extra} atomically (tmp file + rename)."""
    if getattr(model, "inference_optimized", False):
        raise ValueError("cannot save a model after optimize_for_inference(): save it before")
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config_to_dict(model.cfg),
        "model": model.state_dict(),
        **extra,
    }
    atomic_torch_save(checkpoint, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to `path` atomically (a kill leaves the old file or the new one)."""
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)
