"""Feature Pyramid Network (Lin et al., CVPR 2017) with a max-pooled P6 (LastLevelMaxPool).

Takes the ResNet stage outputs C2..C5 and returns P2..P6, all with `out_channels` channels,
at strides 4, 8, 16, 32 and 64 of the input image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrcnn.modeling.group_norm import GroupNorm
from maskrcnn.ops.eager import eager_inference

CONV_NORMS = ("none", "bn", "gn")  # norms after a conv, shared by the FPN and the heads
FPN_NORMS = CONV_NORMS


class ConvNorm(nn.Conv2d):
    """A Conv2d optionally followed by a normalisation layer held as attribute `norm`.

    Being a Conv2d keeps the convolution's keys (`weight`, `bias`) the same with or without
    a norm; the norm's parameters live under `norm.` (as in detectron2's FPN).
    """

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return x


def conv_norm(in_channels: int, out_channels: int, kernel_size: int, norm: str,
              what: str = "conv") -> ConvNorm:
    """A ConvNorm with `padding = kernel_size // 2`: with a bias and no norm for "none",
    without a bias and followed by BatchNorm2d ("bn") or GroupNorm(32) ("gn") otherwise.
    Weights are left to the caller's initialisation; `what` names the layer in errors."""
    if norm not in CONV_NORMS:
        raise ValueError(f"unknown {what} norm {norm!r}; choose one of {CONV_NORMS}")
    layer = None
    if norm == "bn":
        layer = nn.BatchNorm2d(out_channels)
    elif norm == "gn":
        layer = GroupNorm(32, out_channels)
    return ConvNorm(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                    bias=layer is None, norm=layer)


def _conv(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> ConvNorm:
    """FPN conv: kaiming_uniform_(a=1) weights and zero bias (no bias with a norm)."""
    conv = conv_norm(in_channels, out_channels, kernel_size, norm, what="FPN")
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0.0)
    return conv


class FPN(nn.Module):
    """Top-down pathway with lateral 1x1 convs and 3x3 output convs, plus P6 by max pooling.

    Args:
        in_channels_list: channels of C2..C5 (finest first).
        out_channels: channels of every output level.
        norm: "none" (convs with bias), "bn" (BatchNorm2d after each conv, no bias; torchvision
            v2) or "gn" (GroupNorm(32) after each conv, no bias).
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int,
                 norm: str = "none") -> None:
        super().__init__()
        if norm not in FPN_NORMS:
            raise ValueError(f"unknown FPN norm {norm!r}; choose one of {FPN_NORMS}")
        if len(in_channels_list) == 0:
            raise ValueError("FPN needs at least one input level")
        self.in_channels_list = list(in_channels_list)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(
            _conv(c, out_channels, 1, norm) for c in self.in_channels_list
        )
        self.output_convs = nn.ModuleList(
            _conv(out_channels, out_channels, 3, norm) for _ in self.in_channels_list
        )

    def forward(self, features: list[Tensor], release_inputs: bool = False) -> list[Tensor]:
        """features: [C2..C5], each [B, C_i, H_i, W_i] -> [P2..P6], each [B, out, H_i, W_i].

        release_inputs: set each entry of `features` to None once read, so that C5..C2 are
        freed as the top-down pass goes (inference; C2..C5 of ResNet-50 on an 800 x 1216
        image are 111 MiB)."""
        if len(features) != len(self.lateral_convs):
            raise ValueError(f"FPN expects {len(self.lateral_convs)} levels, got {len(features)}")
        last = len(features) - 1
        top_down = self.lateral_convs[last](self._read(features, last, release_inputs))
        outputs = [self.output_convs[last](top_down)]
        for level in range(last - 1, -1, -1):
            lateral = self.lateral_convs[level](self._read(features, level, release_inputs))
            top_down = _add_upsampled(lateral, top_down)
            outputs.insert(0, self.output_convs[level](top_down))
        # LastLevelMaxPool: P6 subsamples P5 by 2 (kernel 1, stride 2).
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2, padding=0))
        return outputs

    @staticmethod
    def _read(features: list[Tensor], level: int, release: bool) -> Tensor:
        feature = features[level]
        if release:
            features[level] = None  # type: ignore[call-overload]
        return feature


def _add_upsampled(lateral: Tensor, top: Tensor) -> Tensor:
    """lateral [B, C, H, W] + top [B, C, h, w] upsampled to H x W (nearest).

    In eager inference at exactly twice the size (every level when the batch is padded to
    a multiple of the coarsest stride), `top` is added in place through a broadcast view
    [B, C, h, 2, w, 2] of `lateral`: the same sums without the upsampled copy (a sixth of
    the time of interpolate + add for P2 of an 800 x 1216 image)."""
    batch, channels, height, width = lateral.shape
    h, w = top.shape[-2:]
    dense = lateral.is_contiguous() or lateral.is_contiguous(memory_format=torch.channels_last)
    if (height, width) == (2 * h, 2 * w) and dense and eager_inference():
        lateral.view(batch, channels, h, 2, w, 2).add_(top[:, :, :, None, :, None])
        return lateral
    return lateral + F.interpolate(top, size=(height, width), mode="nearest")
