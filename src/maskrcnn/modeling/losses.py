"""Loss helpers shared by the heads. Losses and box geometry are computed in float32 (or
float64) even when the network runs under bfloat16/float16 autocast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["box_regression_loss", "full_precision"]


def full_precision(tensor: Tensor) -> Tensor:
    """`tensor` as float32 if it is a half-precision float (autocast output); else as is."""
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        return tensor.float()
    return tensor


def box_regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1 (beta > 0) or L1 (beta == 0) loss, in full precision."""
    pred, target = full_precision(pred), full_precision(target)
    if beta == 0:
        return F.l1_loss(pred, target, reduction="sum")
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
