"""Plain dataclass configuration, presets, and YAML in and out.

One builder (`maskrcnn.modeling.build_model`) turns a `ModelConfig` into a model. Presets
name the paper's and the reference implementations' settings; they differ only in values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)


@dataclass
class InputConfig:
    """Pre-processing. Images enter the model as float RGB in [0, 1]."""

    min_size_train: tuple[int, ...] = (800,)  # one picked at random per image in training
    min_size_test: int = 800
    max_size: int = 1333
    channel_order: str = "RGB"  # "RGB" or "BGR": order fed to the backbone
    pixel_scale: float = 1.0  # 1.0 keeps [0, 1]; 255.0 for detectron2-style inputs
    pixel_mean: tuple[float, float, float] = IMAGENET_RGB_MEAN  # after scale and reorder
    pixel_std: tuple[float, float, float] = IMAGENET_RGB_STD
    size_divisible: int = 32


@dataclass
class BackboneConfig:
    depth: int = 50  # 18, 34, 50, 101
    norm: str = "frozen_bn"  # "frozen_bn", "bn" (trainable), "gn" (GroupNorm, 32 groups)
    trainable_layers: int = 3  # how many of layer4..conv1 train (torchvision's meaning, 0-5)
    fpn_channels: int = 256
    fpn_norm: str = "none"  # "none" (convs with bias), "bn" (BatchNorm2d) or "gn" (GroupNorm 32)
    pretrained: str | None = None  # local path or URL of ImageNet weights for the body
    # MSRA / detectron2 bottlenecks subsample in their first 1x1 conv, torchvision's in the 3x3
    stride_in_1x1: bool = False
    # the paper's Table 2 variants: "fpn" (ResNet-FPN, P2..P6), "c4" (RPN and RoIs on C4,
    # res5 per RoI in the RoI heads) or "c5" (RPN and RoIs on C5, no FPN)
    kind: str = "fpn"
    groups: int = 1  # bottleneck 3x3 conv groups (ResNeXt-101 32x8d: 32)
    width_per_group: int = 64  # bottleneck width per group (ResNeXt-101 32x8d: 8)


@dataclass
class AnchorConfig:
    # one per FPN level P2..P6; all of them on the one level of backbone.kind c4 / c5
    sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    round_cell_anchors: bool = True  # torchvision rounds the base anchors; detectron2 does not
    # torchvision takes each level's stride as padded_size // grid_size (61 for P6 of an 800 px
    # input), detectron2 the nominal stride (4, 8, ..., 64).
    strides_from_grid: bool = True


@dataclass
class RPNConfig:
    pre_nms_top_n_train: int = 2000  # per level and image
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000  # per image
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    score_thresh: float = 0.0
    min_box_size: float = 1e-3
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    smooth_l1_beta: float = 1.0 / 9  # 0 means L1
    box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    head_convs: int = 1  # shared 3x3 conv + ReLU layers before the 1x1s (torchvision v2: 2)


@dataclass
class RoIHeadsConfig:
    num_classes: int = 91  # including background (label 0)
    box_pooler_resolution: int = 7
    mask_pooler_resolution: int = 14
    sampling_ratio: int = 2  # <= 0: adaptive, ceil(roi_size / output_size)
    aligned: bool = False  # RoIAlign half-pixel offset (detectron2: True)
    # RoI features (paper Table 2c/2d; modeling/poolers.py): "roi_align" (the paper),
    # "roi_align_max", "roi_warp" / "roi_warp_max" (RoIPool's quantised RoI, bilinearly
    # sampled: ops/roi_warp.py) or "roi_pool"; the box and the mask branch both use it
    pooler: str = "roi_align"
    # mask targets cropped over "box" (the RoI: the paper) or "pooler" (the region the pooler
    # reads: the quantised RoI for roi_pool / roi_warp; see modeling/mask_head.mask_targets)
    mask_target_region: str = "box"
    canonical_box_size: int = 224
    canonical_level: int = 4
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 1.0 / 9  # 0 means L1
    # box head: box_head_convs 3x3 convs (box_head_conv_channels each, + box_head_norm,
    # + ReLU), flatten, box_head_fcs fc layers of representation_size (+ ReLU). torchvision
    # v1 and the paper: 0 convs, 2 fcs ("2fc"); torchvision v2: 4 convs with "bn", 1 fc.
    box_head_convs: int = 0
    box_head_conv_channels: int = 256
    box_head_norm: str = "none"  # after each box head conv: "none" (bias), "bn" or "gn"
    box_head_fcs: int = 2
    representation_size: int = 1024
    mask_head_channels: int = 256
    mask_head_convs: int = 4
    mask_head_norm: str = "none"  # after each mask head conv: "none" (bias), "bn" or "gn"
    # mask head (paper Table 2e; modeling/mask_head.py): "fcn" (the paper: the convs above,
    # a deconv, a 1x1 conv), or the ablation's MLPs on the flattened mask RoI features:
    # "mlp" (two hidden fcs, then an fc to K x 28 x 28 logits) or "mlp3" (three hidden fcs)
    mask_head: str = "fcn"
    mask_head_fc_dim: int = 1024  # hidden fc width of mlp / mlp3 (the paper's 1024)
    class_agnostic_mask: bool = False  # paper ablation: one mask for all classes
    mask_loss: str = "sigmoid"  # "sigmoid" (paper) or "softmax" (ablation: across classes)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    mask_threshold: float = 0.5
    # full-image masks (modeling/transform.py): "torchvision" (the padded mask resized to the
    # integer box, prob > mask_threshold: ops/mask_paste.py) or "detectron2" (grid_sample
    # over the float box, prob >= mask_threshold: ops/mask_paste_grid.py)
    mask_paste: str = "torchvision"
    binarize_mask_targets: bool = False  # detectron2 thresholds the RoIAligned targets at 0.5


@dataclass
class ModelConfig:
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    class_names: tuple[str, ...] = ()  # index = label; empty when unknown
    category_ids: tuple[int, ...] = ()  # index = label -> dataset category id; empty: identity


def preset(name: str) -> ModelConfig:
    """Return a fresh config for a named preset (see `PRESETS`)."""
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def _torchvision_r50_fpn() -> ModelConfig:
    """torchvision.models.detection.maskrcnn_resnet50_fpn (v1), exactly."""
    return ModelConfig()


def _torchvision_r50_fpn_v2() -> ModelConfig:
    """torchvision.models.detection.maskrcnn_resnet50_fpn_v2, exactly: trainable BatchNorm
    in the body (torchvision does not freeze it), BatchNorm in the FPN, two RPN head convs,
    a 4-conv (BatchNorm) + 1-fc box head, BatchNorm after each mask head conv."""
    cfg = ModelConfig()
    cfg.backbone.norm = "bn"
    cfg.backbone.fpn_norm = "bn"
    cfg.rpn.head_convs = 2
    cfg.roi_heads.box_head_convs = 4
    cfg.roi_heads.box_head_norm = "bn"
    cfg.roi_heads.box_head_fcs = 1
    cfg.roi_heads.mask_head_norm = "bn"
    return cfg


def _paper_fpn(depth: int = 50, groups: int = 1, width_per_group: int = 64) -> ModelConfig:
    """The paper's FPN models (Sec. 3.1): 800 px images, 512 RoIs per image at 1:3
    positive:negative, 1000 proposals per image in training and test, RoIAlign without the
    half-pixel offset (Detectron's, sampling 2), 80 COCO classes + background."""
    cfg = ModelConfig()
    cfg.backbone.depth = depth
    cfg.backbone.groups, cfg.backbone.width_per_group = groups, width_per_group
    cfg.rpn.post_nms_top_n_train = 1000
    cfg.roi_heads.num_classes = 81
    return cfg


def _paper_c4(depth: int = 50) -> ModelConfig:
    """The paper's ResNet-C4 models (Sec. 3.1, Faster R-CNN's C4 head as Detectron builds it):
    RPN on C4 (stride 16, 15 anchors: 5 sizes x 3 ratios), RoIs pooled 14 x 14 from C4, res5
    per RoI, 64 RoIs per image at 1:3, 300 test proposals, 14 x 14 masks."""
    cfg = _paper_fpn(depth)
    cfg.backbone.kind = "c4"
    cfg.rpn.pre_nms_top_n_train, cfg.rpn.post_nms_top_n_train = 12000, 2000
    cfg.rpn.pre_nms_top_n_test, cfg.rpn.post_nms_top_n_test = 6000, 300
    cfg.roi_heads.batch_size_per_image = 64
    return cfg


def _detectron2_r50_fpn() -> ModelConfig:
    """detectron2 mask_rcnn_R_50_FPN settings: BGR 0-255, aligned RoIAlign, adaptive
    sampling, L1 box losses, 1000 post-NMS proposals in training, 80 classes, detectron2's
    mask pasting."""
    cfg = ModelConfig()
    cfg.input = InputConfig(
        min_size_train=(640, 672, 704, 736, 768, 800),
        channel_order="BGR",
        pixel_scale=255.0,
        pixel_mean=(103.530, 116.280, 123.675),
        pixel_std=(1.0, 1.0, 1.0),
    )
    cfg.rpn.post_nms_top_n_train = 1000
    cfg.rpn.smooth_l1_beta = 0.0
    cfg.roi_heads.num_classes = 81
    cfg.roi_heads.aligned = True
    cfg.roi_heads.sampling_ratio = 0
    cfg.roi_heads.smooth_l1_beta = 0.0
    cfg.roi_heads.binarize_mask_targets = True
    cfg.roi_heads.mask_paste = "detectron2"
    cfg.anchors.round_cell_anchors = False
    cfg.anchors.strides_from_grid = False
    cfg.backbone.stride_in_1x1 = True  # MSRA ImageNet bodies (RESNETS.STRIDE_IN_1X1)
    return cfg


def _small() -> ModelConfig:
    """A model that trains on a CPU: ResNet-18, 128 FPN channels, small images,
    fewer RoIs, trainable GroupNorm (no pretrained statistics are needed)."""
    cfg = ModelConfig()
    cfg.input.min_size_train = (320, 352, 384, 416)
    cfg.input.min_size_test = 384
    cfg.input.max_size = 640
    cfg.backbone = BackboneConfig(depth=18, norm="gn", trainable_layers=5, fpn_channels=128,
                                  fpn_norm="gn")
    cfg.rpn.pre_nms_top_n_train = 1000
    cfg.rpn.pre_nms_top_n_test = 500
    cfg.rpn.post_nms_top_n_train = 500
    cfg.rpn.post_nms_top_n_test = 300
    cfg.rpn.batch_size_per_image = 128
    cfg.roi_heads.num_classes = 2
    cfg.roi_heads.batch_size_per_image = 128
    cfg.roi_heads.representation_size = 512
    cfg.roi_heads.mask_head_channels = 128
    return cfg


PRESETS = {
    "torchvision_r50_fpn": _torchvision_r50_fpn,
    "torchvision_r50_fpn_v2": _torchvision_r50_fpn_v2,
    "paper_r50_c4": _paper_c4,
    "paper_r101_c4": lambda: _paper_c4(101),
    "paper_r50_fpn": _paper_fpn,
    "paper_r101_fpn": lambda: _paper_fpn(101),
    "paper_x101_fpn": lambda: _paper_fpn(101, groups=32, width_per_group=8),
    "detectron2_r50_fpn": _detectron2_r50_fpn,
    "small": _small,
}


PRESET_ALIASES = {"r50_fpn": "paper_r50_fpn"}  # earlier names, still read


def preset_name(cfg: ModelConfig) -> str:
    """The preset `cfg` was made from, ignoring its classes (count, names, ids); "custom"
    when no preset matches."""

    def architecture(c: ModelConfig) -> dict[str, Any]:
        data = config_to_dict(c)
        data.pop("class_names")
        data.pop("category_ids")
        data["roi_heads"].pop("num_classes")
        return data

    wanted = architecture(cfg)
    for name, make in PRESETS.items():
        if architecture(make()) == wanted:
            return name
    return "custom"


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Nested plain dict (tuples become lists) for YAML/JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, float) and math.isinf(value):
            return str(value)
        return value

    return {
        f.name: (
            config_to_dict(getattr(cfg, f.name))
            if dataclasses.is_dataclass(getattr(cfg, f.name))
            else plain(getattr(cfg, f.name))
        )
        for f in dataclasses.fields(cfg)
    }


def config_from_dict(data: dict[str, Any], base: Any | None = None, where: str = "") -> Any:
    """Fill a config dataclass (default: ModelConfig()) from a nested dict.

    Unknown keys raise ValueError naming the dotted key path.
    """
    cfg = ModelConfig() if base is None else base
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in data.items():
        path = f"{where}{key}"
        if key not in fields:
            raise ValueError(f"unknown config key {path!r}; known: {sorted(fields)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key {path!r} must be a mapping")
            config_from_dict(value, current, where=f"{path}.")
        else:
            setattr(cfg, key, _coerce(value, current, path))
    return cfg


def _coerce(value: Any, current: Any, path: str) -> Any:
    """Convert a YAML/CLI value to the type of the field's current value."""
    try:
        if isinstance(current, tuple):
            items = value if isinstance(value, (list, tuple)) else [value]
            kind = type(current[0]) if current else (type(items[0]) if items else str)
            return tuple(kind(v) for v in items)
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if current is None or value is None:
            return value
        return type(current)(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config key {path!r}: cannot use {value!r} ({err})") from None


def save_yaml(cfg: ModelConfig, path: str) -> None:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


def load_yaml(path: str, base: ModelConfig | None = None) -> ModelConfig:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping")
    return config_from_dict(data, base)
