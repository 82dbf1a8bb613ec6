"""When inference shortcuts are safe: eager execution without autograd."""

from __future__ import annotations

import torch


def eager_inference() -> bool:
    """No autograd, and no tracing, scripting, ONNX export or torch.compile in progress:
    in-place updates and PyTorch-build-specific ops (oneDNN fusions) are safe here."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting()
                or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


def chunked_inference(rois: torch.Tensor, size: int) -> bool:
    """Whether a head takes the RoIs [R, C, S, S] `size` at a time: more than `size` of
    them, channels_last (the optimized model's), in eager inference."""
    return rois.shape[0] > size and not rois.is_contiguous() and eager_inference()
