"""GroupNorm for channels_last bfloat16 feature maps, with a backward that stays channels_last.

oneDNN's bfloat16 convolutions work channels_last: fed NCHW maps, each convolution reorders
its output (and its gradients) back to NCHW, a quarter of a bfloat16 training step of the
small preset. A channels_last model avoids that, but PyTorch's GroupNorm backward is slow
for channels_last bfloat16 maps (about 27 ms against our 10-13 for [2, 128, 96, 128] on
one core of an AMX Xeon; docs/benchmarks.md, "Training step"). This op keeps PyTorch's
forward and replaces the backward by its closed form, a few vectorised passes over the
[N, H*W, C] view of the channels_last memory. In float32 PyTorch's channels_last backward
is faster than ours, so float32 (and anything not channels_last) goes to `F.group_norm`.

Statistics and gradients are computed in float32 whatever the input dtype, as PyTorch's
kernels do for bfloat16 inputs; the outputs have the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_REDUCED = (torch.bfloat16, torch.float16)


def group_norm(x: Tensor, groups: int, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """GroupNorm of x [N, C, H, W]: `F.group_norm`'s result (float rounding aside).

    The channels_last backward is used where it is faster than PyTorch's: x bfloat16 or
    float16, channels_last, more than one pixel, and a gradient to compute.
    """
    if (x.dtype in _REDUCED and x.dim() == 4 and x.shape[-2] * x.shape[-1] > 1
            and torch.is_grad_enabled() and _is_channels_last(x)):
        return ChannelsLastGroupNorm.apply(x, weight, bias, groups, eps)
    return F.group_norm(x, groups, weight, bias, eps)


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _pixels(x: Tensor) -> Tensor:
    """channels_last [N, C, H, W] -> view [N, H*W, C] of the same memory."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


class ChannelsLastGroupNorm(torch.autograd.Function):
    """apply(x, weight, bias, groups, eps) for channels_last x [N, C, H, W] of any float dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        n, c, h, w = x.shape
        y, mean, rstd = torch.ops.aten.native_group_norm(
            x, weight, bias, n, c, h * w, groups, eps
        )  # mean, rstd: [N, G] float32 (input dtype for float64)
        ctx.groups = groups
        ctx.save_for_backward(x, weight, mean, rstd)
        return y.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, mean, rstd = ctx.saved_tensors
        groups = ctx.groups
        n, c, h, w = x.shape
        acc = torch.promote_types(mean.dtype, torch.float32)
        # float32 copies [N, HW, C] of x and of the gradient: ops that mix bfloat16 and
        # float32 operands, or broadcast along a short innermost dimension, were several
        # times slower than these casts; the gradient's copy is overwritten by dx below.
        xs = _pixels(x).to(acc)
        dy = _pixels(grad_y.contiguous(memory_format=torch.channels_last)).to(acc, copy=True)
        sum_dy = dy.sum(1).view(n, groups, -1)  # per channel [N, G, Cg]
        sum_dy_x = (dy * xs).sum(1).view(n, groups, -1)  # [N, G, Cg]
        mean, rstd = mean.to(acc)[:, :, None], rstd.to(acc)[:, :, None]  # [N, G, 1]
        gamma = (weight.to(acc) if weight is not None else x.new_ones(c, dtype=acc)).view(
            groups, -1)  # [G, Cg]
        grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = ((sum_dy_x - mean * sum_dy) * rstd).sum(0).reshape(c)
        if ctx.needs_input_grad[2]:
            grad_bias = sum_dy.sum(0).reshape(c)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # dx = rstd * (gamma * dy - mean(gamma * dy) - xhat * mean(gamma * dy * xhat)),
            # means over a group's H*W*Cg values; written as dx = p * dy + q * x + r with
            # per-channel p, q, r (the elementwise passes then run along contiguous C).
            count = h * w * (c // groups)
            a = (sum_dy * gamma).sum(-1, keepdim=True)  # sum of gamma * dy per group
            b = (sum_dy_x * gamma).sum(-1, keepdim=True)  # sum of gamma * dy * x
            q = -(rstd**3) * (b - mean * a) / count  # [N, G, 1]
            r = -rstd * a / count - q * mean  # [N, G, 1]
            p, q, r = (t.expand(n, groups, c // groups).reshape(n, 1, c)
                       for t in (rstd * gamma, q, r))  # per channel: [N, 1, C]
            grad = dy.mul_(p).addcmul_(xs, q).add_(r)  # [N, HW, C]
            grad_x = grad.to(x.dtype).view(n, h, w, c).permute(0, 3, 1, 2)
        return grad_x, grad_weight, grad_bias, None, None
