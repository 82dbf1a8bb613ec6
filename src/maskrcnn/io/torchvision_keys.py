"""Map torchvision Mask R-CNN state_dict keys to ours (backbone part).

torchvision's maskrcnn_resnet50_fpn keys under `backbone.`:
- `backbone.body.*`: identical to ours (same ResNet module names).
- `backbone.fpn.inner_blocks.{i}.0.{weight,bias}` (torchvision >= 0.13, Conv2dNormActivation)
  or `backbone.fpn.inner_blocks.{i}.{weight,bias}` (older): our `backbone.fpn.lateral_convs.{i}.*`.
- `backbone.fpn.layer_blocks.{i}...`: likewise our `backbone.fpn.output_convs.{i}.*`.
- With an FPN norm layer, torchvision's `...blocks.{i}.1.*` is our `...convs.{i}.norm.*`.
"""

from __future__ import annotations

import re

_FPN_KEY = re.compile(
    r"^backbone\.fpn\.(?P<block>inner_blocks|layer_blocks)\.(?P<level>\d+)\."
    r"(?:(?P<sub>[01])\.)?(?P<param>[A-Za-z_]+)$"
)
_FPN_BLOCK_NAMES = {"inner_blocks": "lateral_convs", "layer_blocks": "output_convs"}


def map_torchvision_backbone_key(key: str) -> str:
    """Our key for a torchvision Mask R-CNN state_dict key under `backbone.`.

    Body keys and keys outside `backbone.fpn.inner_blocks/layer_blocks` are returned unchanged.
    """
    match = _FPN_KEY.match(key)
    if match is None:
        return key
    block = _FPN_BLOCK_NAMES[match["block"]]
    norm = "norm." if match["sub"] == "1" else ""
    return f"backbone.fpn.{block}.{match['level']}.{norm}{match['param']}"
