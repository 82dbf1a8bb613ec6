"""When inference shortcuts are safe: eager execution without autograd."""

from __future__ import annotations

import torch


def eager_inference() -> bool:
    """No autograd, and no tracing, scripting, ONNX export or torch.compile in progress:
    in-place updates and PyTorch-build-specific ops (oneDNN fusions) are safe here."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting()
                or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())
