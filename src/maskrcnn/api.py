"""The small Python API: build or load a model, predict on images of any common type."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from .config import ModelConfig, preset
from .deploy.runtime import ExportedModel
from .modeling import MaskRCNN
from .structures import Detections

ImageLike = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, Tensor]  # noqa: F821


def create_model(name_or_config: str | ModelConfig = "torchvision_r50_fpn") -> MaskRCNN:
    """A model from a preset name or a config: random weights, with the ImageNet body of
    cfg.backbone.pretrained (a path or URL) when set."""
    from .io.pretrained import build_pretrained_model

    cfg = preset(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return build_pretrained_model(cfg)


def image_to_tensor(image: Any) -> Tensor:
    """A path, PIL image, numpy array (HxW or HxWxC, uint8 or float in [0, 1]) or tensor
    ([3, H, W] float in [0, 1] or uint8) -> float32 [3, H, W] RGB in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        from .data.images import load_image

        return load_image(Path(image))
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected an image tensor [3, H, W], got {list(image.shape)}")
        image = image.expand(3, -1, -1)
        return image.float() / 255 if image.dtype == torch.uint8 else image
    if hasattr(image, "convert"):  # PIL.Image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise ValueError(f"expected an HxW or HxWxC image array, got shape {image.shape}")
        array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # e.g. np.asarray(PIL image): torch warns on those
            array = array.copy()
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        return tensor.float() / 255 if array.dtype == np.uint8 else tensor.float()
    raise TypeError(f"cannot use an image of type {type(image).__name__}")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               backend: str | None = None, precision: str | None = None,
               ) -> MaskRCNN | ExportedModel:
    """The model in a file, ready to predict.

    Our checkpoints and torchvision maskrcnn_resnet50_fpn state_dicts give a MaskRCNN in
    eval mode; exported models give an ExportedModel with the same `predict`: `.onnx` on
    ONNX Runtime, `.xml` (OpenVINO IR) on OpenVINO. backend ("torch", "onnxruntime",
    "openvino") overrides the choice by suffix (openvino also runs .onnx files).

    precision "fp32" (default) or "bf16": what `predict` computes in (model.precision;
    see maskrcnn.engine.precision). bf16 where the device has bfloat16 arithmetic, else a
    warning and fp32; exported models: OpenVINO's inference precision (default: the one
    the file was exported with), refused on ONNX Runtime. For speed in bf16, also call
    `model.optimize_for_inference()` (BatchNorm folded, channels_last), as the CLI does.
    """
    from .deploy.runtime import backend_for, load_exported
    from .engine.precision import check_precision, set_precision
    from .io.weights import load_model as load_weights

    if precision is not None:
        check_precision(precision)
    if backend_for(path, backend) != "torch":
        return load_exported(path, backend, str(device), precision=precision)
    return set_precision(load_weights(path, device=device), precision or "fp32")


def export(model: MaskRCNN, path: str | os.PathLike, format: str = "onnx", *,
           opset: int | None = None, mask_output: str | None = None,
           precision: str = "fp32") -> list[Path]:
    """Export the whole model to ONNX (`path` .onnx) or OpenVINO IR (`path` .xml + .bin).

    mask_output "pasted" gives bool masks at the input size; "probs" the [N, 28, 28]
    probabilities of each detection's class, pasted by the predictor; None (default):
    "pasted", or "probs" for a model that pastes as detectron2 (roi_heads.mask_paste).
    precision "bf16" (OpenVINO only): the file runs in bfloat16 by default (metadata
    `maskrcnn.precision`; the weights stay float32, load_model(path, precision="fp32")
    still runs it exactly); refused for ONNX, whose Conv has no bfloat16. Returns the files
    written. See docs/deploy.md for the graph's inputs and outputs."""
    from .deploy import export as export_model
    from .deploy.metadata import ExportError
    from .engine.precision import check_precision

    check_precision(precision)
    if precision == "bf16" and format != "openvino":
        raise ExportError(f"precision bf16 is an OpenVINO setting (ONNX's Conv has no "
                          f"bfloat16, ONNX Runtime runs float32): export with "
                          f"format='openvino' (--format openvino), or export {format} in fp32 "
                          f"and run the .onnx on OpenVINO with precision bf16")
    written = export_model(model, path, format, opset=opset, mask_output=mask_output)
    if precision != "fp32":
        from .deploy.runtime import set_file_precision

        set_file_precision(written[0], precision)
    return written


def predict(
    model: MaskRCNN | ExportedModel,
    images: ImageLike | Sequence[ImageLike],
    *,
    score_thresh: float | None = None,
    soft_masks: bool = False,
    batch_size: int = 1,
    precision: str | None = None,
) -> list[Detections]:
    """Detections (boxes xyxy, scores, labels, masks) per image, in original pixels.

    score_thresh applies to this call only (default: the model's cfg.roi_heads.score_thresh);
    the model is not changed, so one model can serve calls with different thresholds.
    precision ("fp32", "bf16"; default: the model's, see load_model) likewise, for PyTorch
    models; an exported model's is fixed when it is loaded."""
    from .engine.precision import (
        check_precision,
        model_precision,
        predict_in,
        resolve_precision,
    )

    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    device = getattr(model, "device", None) or next(model.parameters()).device
    run = model.predict
    if precision is not None and check_precision(precision) != model_precision(model):
        if isinstance(model, ExportedModel):
            raise ValueError(f"{model.path} runs in {model_precision(model)}: an exported "
                             "model's precision is chosen when loading it "
                             f"(load_model(path, precision={precision!r}))")
        effective = resolve_precision(precision, device)

        def run(tensors, soft_masks, score_thresh):
            return predict_in(model, effective, tensors, soft_masks, score_thresh)
    was_training = model.training
    model.eval()
    try:
        results: list[Detections] = []
        for batch in _chunks(items, batch_size):
            tensors = [image_to_tensor(img).to(device) for img in batch]
            results.extend(run(tensors, soft_masks=soft_masks, score_thresh=score_thresh))
    finally:
        model.train(was_training)
    return results


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + max(size, 1)]
