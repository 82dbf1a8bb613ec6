"""ResNet body + FPN backbone (or one level, C4 / C5, without FPN), frozen BatchNorm, BN
folding.

Key names match torchvision's ResNet (`conv1`, `bn1`, `layer1..layer4`, no `fc`), so a
torchvision ImageNet checkpoint loads into `Backbone.body` as it is, and the body keys of
torchvision's maskrcnn_resnet50_fpn (`backbone.body.*`) are ours unchanged. ImageNet weights
(`cfg.pretrained`) are read by maskrcnn.io.pretrained: this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from maskrcnn.config import BackboneConfig
from maskrcnn.modeling.fpn import FPN, ConvNorm
from maskrcnn.modeling.fusion import conv_relu
from maskrcnn.modeling.group_norm import GroupNorm
from maskrcnn.modeling.resnet_blocks import BasicBlock, Bottleneck
from maskrcnn.ops.eager import eager_inference

BODY_NORMS = ("frozen_bn", "bn", "gn")
BACKBONE_KINDS = ("fpn", "c4", "c5")  # backbone.kind
_STAGES: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, no parameters).

    y = (x - running_mean) * weight / sqrt(running_var + eps) + bias, per channel.
    State-dict keys are those of nn.BatchNorm2d; `num_batches_tracked` is ignored on load.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """Per-channel (scale, shift), each [C], such that y = x * scale + shift."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W], same dtype as x."""
        scale, shift = self.scale_and_shift()
        # [C] -> [1, C, 1, 1]
        scale = scale.to(x.dtype).reshape(1, -1, 1, 1)
        shift = shift.to(x.dtype).reshape(1, -1, 1, 1)
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _norm_factory(norm: str) -> Callable[[int], nn.Module]:
    """Callable channels -> norm layer for a body norm name."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda channels: GroupNorm(32, channels)
    raise ValueError(f"unknown backbone norm {norm!r}; choose one of {BODY_NORMS}")


class ResNetBody(nn.Module):
    """ResNet stem and stages 1-4 (torchvision's blocks and key names, no avgpool/fc).

    Args:
        depth: 18, 34, 50, 101 or 152.
        norm: "frozen_bn", "bn" (trainable BatchNorm2d) or "gn" (GroupNorm with 32 groups).
        trainable_layers: 0..5, how many of layer4, layer3, layer2, layer1, conv1 train
            (torchvision's meaning; bn1 trains only with 5). Others get requires_grad False.
        stride_in_1x1: put a bottleneck's stride in its 1x1 conv (MSRA/detectron2 weights)
            instead of its 3x3 conv (torchvision).
        groups, width_per_group: the bottlenecks' 3x3 conv groups and width per group
            (torchvision's Bottleneck `groups` / `base_width`; ResNeXt-101 32x8d: 32, 8).
        num_stages: 4, or 3 for C4 models (no layer4: res5 runs per RoI in the RoI heads).
    forward: x [B, 3, H, W] -> [C2, C3, C4, C5] at strides 4, 8, 16, 32 (without C5 for
    num_stages 3).
    """

    def __init__(self, depth: int = 50, norm: str = "frozen_bn", trainable_layers: int = 5,
                 stride_in_1x1: bool = False, groups: int = 1, width_per_group: int = 64,
                 num_stages: int = 4) -> None:
        super().__init__()
        block, blocks_per_stage = _resnet_blocks(depth, groups, width_per_group)
        norm_layer = _norm_factory(norm)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.fuse_relu = False  # fusion.fuse_conv_relu: conv1 + relu in one call (bn1 folded)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        self.out_channels_list: list[int] = []
        self.num_stages = num_stages
        for index, num_blocks in enumerate(blocks_per_stage[:num_stages]):
            planes = 64 * 2**index
            stage = _make_stage(block, in_channels, planes, num_blocks,
                                stride=1 if index == 0 else 2, norm_layer=norm_layer,
                                stride_in_1x1=stride_in_1x1, groups=groups,
                                width_per_group=width_per_group)
            self.add_module(f"layer{index + 1}", stage)
            in_channels = planes * block.expansion
            self.out_channels_list.append(in_channels)
        _init_resnet_weights(self)
        freeze_body_layers(self, trainable_layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.fuse_relu and isinstance(self.bn1, nn.Identity):
            x = self.maxpool(conv_relu(self.conv1, x))
        else:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
            features.append(x)
        return features


def _resnet_blocks(depth: int, groups: int, width_per_group: int
                   ) -> tuple[type[nn.Module], tuple[int, int, int, int]]:
    """(block class, blocks per stage) of a depth, the grouped width checked."""
    if depth not in _STAGES:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(_STAGES)}")
    block, blocks_per_stage = _STAGES[depth]
    if groups < 1 or width_per_group < 1:
        raise ValueError(f"backbone.groups and backbone.width_per_group must be >= 1, got "
                         f"{groups} and {width_per_group}")
    if block is BasicBlock and (groups, width_per_group) != (1, 64):
        raise ValueError(f"ResNet-{depth} has basic blocks: backbone.groups must be 1 and "
                         f"backbone.width_per_group 64, got {groups} and {width_per_group}")
    return block, blocks_per_stage


def _init_resnet_weights(module: nn.Module) -> None:
    """torchvision's ResNet init: kaiming-normal convs (fan_out), norms weight 1, bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def build_res5(cfg: BackboneConfig) -> nn.Sequential:
    """ResNet's layer4 (res5, stride 2 in its first block) alone, for the C4 RoI heads:
    [R, C4 channels, S, S] -> [R, 2048 (512 for ResNet-18/34), S / 2, S / 2]. Keys are
    those of `layer4.` without the prefix; it trains when trainable_layers >= 1 (layer4 is
    the last stage of freeze_body_layers)."""
    block, blocks_per_stage = _resnet_blocks(cfg.depth, cfg.groups, cfg.width_per_group)
    in_channels = 256 * block.expansion  # layer3's output
    res5 = _make_stage(block, in_channels, 512, blocks_per_stage[3], stride=2,
                       norm_layer=_norm_factory(cfg.norm), stride_in_1x1=cfg.stride_in_1x1,
                       groups=cfg.groups, width_per_group=cfg.width_per_group)
    _init_resnet_weights(res5)
    if not 0 <= cfg.trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {cfg.trainable_layers}")
    res5.requires_grad_(cfg.trainable_layers >= 1)
    return res5


def _make_stage(block: type[nn.Module], in_channels: int, planes: int, num_blocks: int,
                stride: int, norm_layer: Callable[[int], nn.Module],
                stride_in_1x1: bool, groups: int = 1, width_per_group: int = 64
                ) -> nn.Sequential:
    """One ResNet stage; the first block subsamples by `stride` and projects if needed."""
    out_channels = planes * block.expansion
    # torchvision's Bottleneck: width = planes * base_width / 64 * groups (BasicBlock: 1, 64)
    grouped = {} if block is BasicBlock else {"groups": groups, "base_width": width_per_group}
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            norm_layer(out_channels),
        )
    blocks = [block(in_channels, planes, stride=stride, downsample=downsample,
                    norm_layer=norm_layer, **grouped)]
    if stride_in_1x1 and block is Bottleneck and stride != 1:
        blocks[0].conv1.stride = (stride, stride)
        blocks[0].conv2.stride = (1, 1)
    blocks += [block(out_channels, planes, norm_layer=norm_layer, **grouped)
               for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def freeze_body_layers(body: nn.Module, trainable_layers: int) -> None:
    """Set requires_grad as torchvision does: train the last `trainable_layers` of
    (conv1, layer1, layer2, layer3, layer4); bn1 trains only when all 5 do."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trainable.append("bn1")
    for name, parameter in body.named_parameters():
        parameter.requires_grad_(name.split(".")[0] in trainable)


class Backbone(nn.Module):
    """ResNet body + FPN. forward: x [B, 3, H, W] -> [P2, P3, P4, P5, P6], each
    [B, out_channels, ceil(H / s), ceil(W / s)] for s in `strides`."""

    strides: tuple[int, ...] = (4, 8, 16, 32, 64)

    def __init__(self, body: ResNetBody, fpn: FPN) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels: int = fpn.out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fpn(self.body(x), release_inputs=eager_inference())


class SingleLevelBackbone(nn.Module):
    """A ResNet body without FPN whose last stage is the one feature level: C4 (a body of 3
    stages, stride 16; backbone.kind c4) or C5 (4 stages, stride 32; kind c5).
    forward: x [B, 3, H, W] -> [C], C [B, out_channels, ceil(H / s), ceil(W / s)]."""

    def __init__(self, body: ResNetBody) -> None:
        super().__init__()
        self.body = body
        self.strides: tuple[int, ...] = (2 ** (body.num_stages + 1),)  # (16,) or (32,)
        self.out_channels: int = body.out_channels_list[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.body(x)[-1:]


def build_backbone(cfg: BackboneConfig) -> Backbone | SingleLevelBackbone:
    """Build the backbone of `cfg` (`backbone.kind`) with fresh weights: ResNet-FPN, or the
    body up to C4 / C5 (`cfg.pretrained` is not read here:
    maskrcnn.io.pretrained.build_pretrained_model loads it)."""
    if cfg.kind not in BACKBONE_KINDS:
        raise ValueError(f"unknown backbone.kind {cfg.kind!r}; choose one of {BACKBONE_KINDS}")
    body = ResNetBody(cfg.depth, cfg.norm, cfg.trainable_layers, cfg.stride_in_1x1,
                      groups=cfg.groups, width_per_group=cfg.width_per_group,
                      num_stages=3 if cfg.kind == "c4" else 4)
    if cfg.kind != "fpn":
        return SingleLevelBackbone(body)
    backbone = Backbone(body, FPN(body.out_channels_list, cfg.fpn_channels, cfg.fpn_norm))
    return backbone


_FOLDABLE = (FrozenBatchNorm2d, nn.BatchNorm2d)


@torch.no_grad()
def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every FrozenBatchNorm2d (and BatchNorm2d, with its running statistics: for
    inference only) that directly follows a Conv2d into that conv, in place.

    Pairs are siblings named `convK` / `bnK` (ResNet stems and blocks), consecutive
    (Conv2d, BN) children of an nn.Sequential (`downsample.0` / `.1`), and the `norm` of a
    ConvNorm (FPN and head convs). The conv gains a bias if it had none; the BN becomes
    nn.Identity (a ConvNorm's norm None). Returns `module`.
    """
    for parent in list(module.modules()):
        if isinstance(parent, ConvNorm) and isinstance(parent.norm, _FOLDABLE):
            _fold_into_conv(parent, parent.norm)
            parent.norm = None
            continue
        children = dict(parent.named_children())
        names = list(children)
        for position, name in enumerate(names):
            bn = children[name]
            if not isinstance(bn, _FOLDABLE):
                continue
            if isinstance(parent, nn.Sequential):
                conv = children[names[position - 1]] if position > 0 else None
            else:
                conv = children.get("conv" + name[2:]) if name.startswith("bn") else None
            if isinstance(conv, nn.Conv2d):
                _fold_into_conv(conv, bn)
                setattr(parent, name, nn.Identity())
    return module


def _scale_and_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """y = x * scale + shift of a frozen or (eval-mode) BatchNorm, in float64."""
    if isinstance(bn, FrozenBatchNorm2d):
        return tuple(t.double() for t in bn.scale_and_shift())
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


def _fold_into_conv(conv: nn.Conv2d, bn: nn.Module) -> None:
    """conv.weight *= scale per output channel; conv.bias = bias * scale + shift (float64)."""
    scale, shift = _scale_and_shift(bn)
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)  # [O] -> [O, 1, 1, 1]
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype),
                                 requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))
