"""nn.GroupNorm whose backward stays channels_last (ops.group_norm); same keys and results."""

from __future__ import annotations

from torch import Tensor, nn

from maskrcnn.ops.group_norm import group_norm


class GroupNorm(nn.GroupNorm):
    """torch.nn.GroupNorm with `maskrcnn.ops.group_norm` as its forward."""

    def forward(self, x: Tensor) -> Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
