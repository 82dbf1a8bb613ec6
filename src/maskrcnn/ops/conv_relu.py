"""relu(conv2d(x) [+ residual]) as one oneDNN call on CPU (inference only).

A separate ReLU (and residual add) is a full pass over each feature map: in the folded
R50-FPN at 800 x 1216 those passes were ~5 % of a float32 inference on one core of an AMX
Xeon. oneDNN applies them while the convolution writes its output (`post-ops`), through
PyTorch's `mkldnn::_convolution_pointwise` (the op inductor's CPU fusions call). Where that
is not possible (autograd, CUDA, tracing or export, float16, a build without oneDNN) the
same result comes from the separate ops.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .eager import eager_inference


def conv2d_relu(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], groups: int,
                residual: Tensor | None = None, sum_into_residual: bool = False) -> Tensor:
    """relu(conv2d(x, weight, bias, ...) + residual), residual optional and of the output's
    shape; under CPU autocast the convolution runs in the autocast dtype, as F.conv2d's.
    sum_into_residual: the fused call may write the result into `residual` (no new map;
    the caller must not need `residual` afterwards)."""
    dtype = _fused_dtype(x, weight)
    if dtype is None:
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        return (out if residual is None else out + residual).relu_()
    x, weight = x.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    args = (weight, bias, list(padding), list(stride), list(dilation), groups)
    op = torch.ops.mkldnn._convolution_pointwise
    if residual is None:
        return op(x, *args, "relu", [], "")
    in_place = sum_into_residual and residual.dtype == dtype and _dense(residual)
    if in_place and _in_place_available():
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x, *args, "add", 1.0, "relu", [], "")
    return op.binary(x, residual.to(dtype), *args, "add", 1.0, "relu", [], "")


def _dense(t: Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _fused_dtype(x: Tensor, weight: Tensor) -> torch.dtype | None:
    """The dtype the fused call would run in, or None where it cannot run."""
    if x.device.type != "cpu" or not eager_inference() or not _available():
        return None
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
    if dtype not in (torch.float32, torch.bfloat16) or (not autocast and weight.dtype != dtype):
        return None
    return dtype


@functools.cache
def _in_place_available() -> bool:
    return hasattr(torch.ops.mkldnn, "_convolution_pointwise_")


@functools.cache
def _available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_convolution_pointwise")
