"""ResNet's residual blocks with torchvision's module names, order and arithmetic, so that
torchvision ResNet checkpoints load into our bodies unchanged (keys `conv1`, `bn1`, ...,
`downsample.0`, `downsample.1`).

They are written here rather than imported from torchvision.models.resnet: importing
torchvision's Python package costs ~160 MiB of resident memory (its models, datasets and
transforms), which `maskrcnn predict` does not need. Bottleneck is ResNet v1.5 (the stride
on the 3x3 conv) with ResNeXt's grouped width; backbone.py moves the stride to the first
1x1 conv for detectron2's stride_in_1x1. The submodules are created in torchvision's order,
so the same seed gives the same initial weights.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1,
          groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2,
                     groups=groups, bias=False)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)): two 3x3 convs (ResNet-18/34).

    [N, in_channels, H, W] -> [N, planes, H / stride, W / stride]."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, planes, 3, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride, groups), 1x1 expand by 4, each with a norm; ReLU after
    each and after the residual sum (ResNet-50/101/152, ResNeXt).

    [N, in_channels, H, W] -> [N, 4 * planes, H / stride, W / stride]; the inner width is
    planes * base_width / 64 * groups (64 and 1: planes)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv(in_channels, width, 1)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv(width, width, 3, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv(width, planes * self.expansion, 1)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)
