"""Convolution + ReLU (+ residual add) fused for inference: `fuse_conv_relu(model)`, called
by `MaskRCNN.optimize_for_inference` after BatchNorm folding (ops/conv_relu.py says when
the fused call runs). Keys and parameters are unchanged."""

from __future__ import annotations

from torch import Tensor, nn

from maskrcnn.modeling.resnet_blocks import BasicBlock, Bottleneck
from maskrcnn.ops.conv_relu import conv2d_relu


def conv_relu(conv: nn.Conv2d, x: Tensor, residual: Tensor | None = None,
              sum_into_residual: bool = False) -> Tensor:
    """relu(conv(x) [+ residual]) for a zero-padded nn.Conv2d (see conv2d_relu)."""
    return conv2d_relu(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                       conv.groups, residual, sum_into_residual)


class _Fused:
    """The residual sum is written into the shortcut's map (no new output map) when that
    map is this block's own: the projection's output, or the block's input where
    fuse_conv_relu marked it temporary (a block after the first of its stage; a stage's
    first block reads the previous stage's output, which the body keeps)."""

    input_is_temporary = False

    def _shortcut(self, x: Tensor) -> tuple[Tensor, bool]:
        if self.downsample is None:
            return x, self.input_is_temporary
        return self.downsample(x), True


class FusedBottleneck(_Fused, Bottleneck):
    """A Bottleneck with its BatchNorms folded (nn.Identity), ReLUs fused."""

    def forward(self, x: Tensor) -> Tensor:
        out = conv_relu(self.conv2, conv_relu(self.conv1, x))
        identity, own = self._shortcut(x)  # after conv1, conv2: fewer maps alive at once
        return conv_relu(self.conv3, out, identity, sum_into_residual=own)


class FusedBasicBlock(_Fused, BasicBlock):
    """A BasicBlock with its BatchNorms folded (nn.Identity), ReLUs fused."""

    def forward(self, x: Tensor) -> Tensor:
        out = conv_relu(self.conv1, x)
        identity, own = self._shortcut(x)
        return conv_relu(self.conv2, out, identity, sum_into_residual=own)


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
    for stage in model.modules():  # blocks after the first of a stage get a temporary input
        if isinstance(stage, nn.Sequential):
            for block in list(stage)[1:]:
                if isinstance(block, _Fused):
                    block.input_is_temporary = True
    return model
