"""Convolution + ReLU (+ residual add) fused for inference: `fuse_conv_relu(model)`, called
by `MaskRCNN.optimize_for_inference` after BatchNorm folding (ops/conv_relu.py says when
the fused call runs). Keys and parameters are unchanged."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from maskrcnn.ops.conv_relu import conv2d_relu


def conv_relu(conv: nn.Conv2d, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """relu(conv(x) [+ residual]) for a zero-padded nn.Conv2d."""
    return conv2d_relu(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                       conv.groups, residual)


class FusedBottleneck(Bottleneck):
    """torchvision's Bottleneck with its BatchNorms folded (nn.Identity), ReLUs fused."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = conv_relu(self.conv2, conv_relu(self.conv1, x))
        return conv_relu(self.conv3, out, identity)


class FusedBasicBlock(BasicBlock):
    """torchvision's BasicBlock with its BatchNorms folded (nn.Identity), ReLUs fused."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return conv_relu(self.conv2, conv_relu(self.conv1, x), identity)


_FUSED = {Bottleneck: (FusedBottleneck, 3), BasicBlock: (FusedBasicBlock, 2)}


def fuse_conv_relu(model: nn.Module) -> nn.Module:
    """In place: ResNet blocks whose norms are folded become their fused subclass, and
    modules with a `fuse_relu` switch (the body's stem, the RPN head) turn it on."""
    for module in model.modules():
        fused = _FUSED.get(type(module))
        if fused and all(isinstance(getattr(module, f"bn{i}"), nn.Identity)
                         for i in range(1, fused[1] + 1)):
            module.__class__ = fused[0]
        elif hasattr(module, "fuse_relu"):
            module.fuse_relu = True
    return model
