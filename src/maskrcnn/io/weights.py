"""Weight files: reading whole models (ours, torchvision's, ...) and writing ours.

Every file is read without running code: safetensors, `torch.load(weights_only=True)`, or
io/restricted_pickle.py for plain pickles of numpy arrays (detectron2's `.pkl`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..config import ModelConfig, config_from_dict, config_to_dict
from . import restricted_pickle as rp
from . import safetensors_weights as sf
from . import torchvision_weights as tv
from .atomic import atomic_write

CHECKPOINT_FORMAT = "maskrcnn"
CHECKPOINT_VERSION = 1


class WeightsError(ValueError):
    """A weight file that cannot be used; the message names the file."""


def read_weight_file(path: str | os.PathLike) -> dict[str, Any]:
    """The file's contents as a dict, by its content: safetensors, a plain pickle of numpy
arrays (detectron2 / Caffe2 `.pkl`, restricted unpickler), else torch.load with
weights_only=True; a clear WeightsError for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file")
    if sf.is_safetensors(path):
        try:
            return sf.read_safetensors(path, CHECKPOINT_FORMAT)
        except Exception as err:  # safetensors raises its own error types
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightsError(f"{path}: not a readable safetensors file ({reason})") from None
    if rp.is_plain_pickle(path):  # never torch.load: it refuses numpy globals anyway
        data = read_plain_pickle(path)
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip and unpickler errors all land here
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightsError(f"{path}: not a readable PyTorch weight file ({reason})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def read_plain_pickle(path: str | os.PathLike) -> Any:
    """A plain pickle read with io/restricted_pickle.py: WeightsError naming the file and the
    refused global (nothing of the file is run), or why it is unreadable."""
    try:
        return rp.read_numpy_pickle(path)
    except rp.PickleRefused as err:
        raise WeightsError(f"{path}: refused to unpickle {err.name} (a .pkl weight file may hold "
                           "only numpy arrays and containers; nothing was run)") from None
    except Exception as err:  # damaged pickles raise many types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: not a readable pickle ({reason})") from None


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


@dataclass
class ModelWeights:
    """A whole model read from a weight file: its config, its tensors under our key names, and
    where the file came from ("maskrcnn", "torchvision", ...)."""

    cfg: ModelConfig
    state_dict: dict[str, Tensor]
    origin: str


def _ours(data: dict[str, Any], path: Path) -> ModelWeights | None:
    if data.get("format") != CHECKPOINT_FORMAT:
        return None
    try:
        cfg = config_from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{path}: bad config in checkpoint ({err})") from None
    return ModelWeights(cfg, data["model"], "maskrcnn")


def _torchvision(data: dict[str, Any], path: Path) -> ModelWeights | None:
    if not tv.is_torchvision_maskrcnn(data):
        return None
    return ModelWeights(tv.torchvision_config(data), tv.convert_torchvision_state_dict(data),
                        "torchvision")


def _detectron2(data: dict[str, Any], path: Path) -> ModelWeights | None:
    from .detectron2_weights import read_detectron2_model  # it imports this module

    return read_detectron2_model(data, path)


# Each recogniser looks at a file's content and returns None when it is not its kind.
_RECOGNISERS: list[Callable[[dict[str, Any], Path], ModelWeights | None]] = [
    _ours,
    _torchvision,
    _detectron2,
]
KNOWN_FORMATS = ("a maskrcnn checkpoint, a torchvision maskrcnn_resnet50_fpn state_dict or a "
                 "detectron2 Mask R-CNN FPN file (model-zoo .pkl or checkpointer .pth)")


def read_model_weights(path: str | os.PathLike) -> ModelWeights:
    """Read any whole-model weight file we know, recognised from its content."""
    path = Path(path)
    data = read_weight_file(path)
    for recognise in _RECOGNISERS:
        weights = recognise(data, path)
        if weights is not None:
            return weights
    raise WeightsError(f"{path}: not {KNOWN_FORMATS}")


def holds_whole_model(path: str | os.PathLike) -> bool:
    """Whether `path` is a whole-model file we read (False when unreadable)."""
    try:
        read_model_weights(path)
    except WeightsError:
        return False
    return True


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Build the model a weight file describes and load it, in eval mode.

    Accepts every file `read_model_weights` knows (our checkpoints with their config,
    torchvision maskrcnn_resnet50_fpn state_dicts mapped onto the torchvision preset, ...).
    """
    from ..modeling import build_model

    weights = read_model_weights(path)
    model = build_model(weights.cfg)
    load_state_dict_checked(model, weights.state_dict, path)
    return model.to(device).eval()


def save_model(model: nn.Module, path: str | os.PathLike, *, safetensors: bool = False,
               **extra: Any) -> None:
    """Write {format, version, config, model, **extra} atomically (tmp file + rename).

    safetensors=True (or a `.safetensors` path): the tensors in safetensors format with the
    config in its metadata (no `extra`: it holds tensors and strings only)."""
    if getattr(model, "inference_optimized", False):
        raise ValueError("cannot save a model after optimize_for_inference(): save it before")
    if safetensors or str(path).endswith(".safetensors"):
        if extra:
            raise ValueError(f"a safetensors file holds no {sorted(extra)}")
        sf.write_safetensors(model.state_dict(), config_to_dict(model.cfg), path,
                             CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
        return
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
