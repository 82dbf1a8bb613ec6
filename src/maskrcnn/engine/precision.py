"""Inference precision of a model: "fp32" (the exact float32 model) or "bf16".

bf16 runs the convolutions and the heads' matrix products in bfloat16 under
`torch.autocast` (as training with amp does); anchors, box decoding, the boxes NMS
compares and the mask pasting stay float32 (the model keeps its box geometry in float32
under autocast); class scores come from bfloat16 logits; the returned Detections are
float32. Where the device has no bfloat16
arithmetic (CPU without AVX512-BF16 / AMX, as oneDNN reports it; CUDA before Ampere),
bf16 is emulated and slower than float32: a one-line warning, and float32 instead.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor

from ..structures import Detections

PRECISIONS = ("fp32", "bf16")

__all__ = ["PRECISIONS", "bf16_supported", "check_precision", "model_precision",
           "predict_in", "resolve_precision", "set_precision"]


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else ValueError with the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of "
                         f"{', '.join(PRECISIONS)} (int8: `maskrcnn quantize` writes an int8 "
                         "model file)")
    return precision


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes in bfloat16 in hardware (see engine.demo.native_bfloat16)."""
    from .demo import native_bfloat16

    return native_bfloat16(str(device))


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """The precision that will run: bf16 only where the device has bfloat16 arithmetic;
    elsewhere a one-line warning on stderr and fp32."""
    check_precision(precision)
    if precision == "bf16" and not bf16_supported(device):
        print(f"maskrcnn: warning: {torch.device(device).type} has no bfloat16 arithmetic "
              "here (it would be emulated, slower than float32): running in fp32",
              file=sys.stderr, flush=True)
        return "fp32"
    return precision


def model_precision(model) -> str:
    """The precision `model.predict` runs in (fp32 unless set_precision said otherwise)."""
    return getattr(model, "precision", "fp32")


def _device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def predict_in(model, precision: str, images: Sequence[Tensor], soft_masks: bool = False,
               score_thresh: float | None = None) -> list[Detections]:
    """MaskRCNN.predict of `model` run in `precision` (already resolved), whatever the
    model's own precision; float32 Detections."""
    predict = type(model).predict  # the class's: bypasses a set_precision wrapper
    context = (torch.autocast(_device(model).type, dtype=torch.bfloat16)
               if precision == "bf16" else nullcontext())
    with context:
        detections = predict(model, images, soft_masks=soft_masks, score_thresh=score_thresh)
    return detections if precision == "fp32" else [_float32(d) for d in detections]


def _predict_bf16(self, images: Sequence[Tensor], soft_masks: bool = False,
                  score_thresh: float | None = None) -> list[Detections]:
    """MaskRCNN.predict under bfloat16 autocast (installed by set_precision)."""
    return predict_in(self, "bf16", images, soft_masks=soft_masks, score_thresh=score_thresh)


def set_precision(model, precision: str):
    """Make `model.predict` (and forward in eval mode) run in `precision` from now on;
    bf16 falls back to fp32 with a warning where the device lacks it (resolve_precision).
    The weights stay float32 (the model can still be saved and trained). Returns the model,
    its `precision` attribute the precision in effect."""
    effective = resolve_precision(precision, _device(model))
    if effective == "bf16":
        model.predict = types.MethodType(_predict_bf16, model)  # deep copies follow it
    else:
        model.__dict__.pop("predict", None)
    model.precision = effective
    return model


def _float32(det: Detections) -> Detections:
    """Detections with float tensors (boxes, scores, soft masks) in float32."""
    for name, value in vars(det).items():
        if isinstance(value, Tensor) and value.is_floating_point() \
                and value.dtype != torch.float32:
            setattr(det, name, value.float())
    return det
