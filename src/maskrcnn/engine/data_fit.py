"""Settings that fit the training set, chosen before training (as YOLO's autoanchor does).

Looks at the objects at the size the network sees them (after the resize of
`input.min_size_train` / `max_size`) and, for every setting the user did not give:
- anchor sizes: the FPN's five sizes s, 2s, ..., 16s with the base s (8 to 32 px) that
  covers the objects best, where covered means an anchor of some level and ratio, placed
  a quarter of its level's stride off the object's centre, overlaps it with IoU >= 0.5
  (the default s = 32 is kept unless a smaller one covers 3 % more of the objects; of
  bases within 2 % of the best, the largest);
- detections per image: when the most objects any training image holds, x 1.25, exceed
  them, that rounded up to 50, and the proposals kept after NMS (test and training) at
  least 3x / 2x that.
What was chosen, and why, is one or two printed lines; the config (RUN/config.yaml) holds
the result, and `--set` of a setting keeps the user's value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..config import ModelConfig

BASE_SIZES = (32, 24, 16, 12, 8)  # candidate smallest anchor sizes (px), the default first
COVERED_IOU = 0.5
MIN_GAIN = 0.03  # a smaller base must cover this much more of the objects
NEAR_BEST = 0.02  # of bases this close to the best coverage, the largest is taken
DETECTION_HEADROOM = 1.25
# The settings this module may change (dotted ModelConfig paths).
ANCHOR_KEY = "anchors.sizes"
DETECTION_KEYS = ("roi_heads.detections_per_image", "rpn.post_nms_top_n_test",
                  "rpn.pre_nms_top_n_test", "rpn.post_nms_top_n_train",
                  "rpn.pre_nms_top_n_train")


@dataclass
class DataFit:
    """What the training set looks like and what was changed because of it."""

    num_objects: int
    object_sizes: tuple[float, float, float]  # 5th, 50th, 95th percentile sqrt(area), px
    max_per_image: int
    coverage: dict[int, float] = field(default_factory=dict)  # base size -> covered share
    changes: dict[str, tuple[object, object]] = field(default_factory=dict)  # key: old, new
    kept: list[str] = field(default_factory=list)  # would change, but the user set them

    def lines(self) -> list[str]:
        p5, p50, p95 = self.object_sizes
        head = (f"data fit: {self.num_objects} objects of {p5:.0f}-{p95:.0f} px (5-95 %, "
                f"median {p50:.0f}) at the network's input size, up to {self.max_per_image} "
                "per image")
        kept = ["  kept as you set them: " + ", ".join(self.kept)] if self.kept else []
        if not self.changes:
            return [head + ("; nothing changed" if kept else "; the settings fit, nothing "
                            "changed"), *kept]
        changed = ", ".join(f"{k} {_short(old)} -> {_short(new)}"
                            for k, (old, new) in self.changes.items())
        why = ""
        if ANCHOR_KEY in self.changes:
            base = self.changes[ANCHOR_KEY][1][0]
            default = self.changes[ANCHOR_KEY][0][0]
            why = (f" (anchors from {base} px cover {self.coverage.get(base, 0):.0%} of the "
                   f"objects, from {default} px {self.coverage.get(default, 0):.0%})")
        lines = [head, f"  set {changed}", f"  {why.strip(' ()') or 'for the objects per image'}"
                 "; --set any of them to keep your own"]
        return lines + kept


def _short(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return str(value)


def input_scales(cfg: ModelConfig, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The resize factor of each image in training (the mean of min_size_train's choices)."""
    short = float(np.mean(cfg.input.min_size_train))
    low, high = np.minimum(heights, widths), np.maximum(heights, widths)
    return np.minimum(short / low, cfg.input.max_size / high)


def anchor_coverage(sizes_wh: np.ndarray, base: int, ratios: Sequence[float],
                    strides: Sequence[int] = (4, 8, 16, 32, 64)) -> float:
    """Share of objects (w, h in px, [N, 2]) covered by anchors base * 2^l at IoU >= 0.5."""
    if len(sizes_wh) == 0:
        return 1.0
    w, h = sizes_wh[:, 0:1], sizes_wh[:, 1:2]  # [N, 1]
    best = np.zeros(len(sizes_wh))
    for level, stride in enumerate(strides):
        size = base * 2.0 ** level
        offset = stride / 4.0
        for ratio in ratios:  # ratio = height / width, area size^2
            aw, ah = size / math.sqrt(ratio), size * math.sqrt(ratio)
            inter = _overlap(w, aw, offset) * _overlap(h, ah, offset)
            iou = inter / (w * h + aw * ah - inter)
            best = np.maximum(best, iou[:, 0])
    return float(np.mean(best >= COVERED_IOU))


def _overlap(length: np.ndarray, anchor: float, offset: float) -> np.ndarray:
    """Overlap of [-length/2, length/2] and an anchor interval centred at `offset`."""
    low = np.maximum(-length / 2, offset - anchor / 2)
    high = np.minimum(length / 2, offset + anchor / 2)
    return np.clip(high - low, 0, None)


def fit_to_data(cfg: ModelConfig, boxes_per_image: Sequence[np.ndarray],
                image_hw: Sequence[tuple[int, int]], user_keys: Sequence[str] = (),
                anchors: bool = True) -> DataFit:
    """Change `cfg` in place to fit the objects (boxes xyxy in original pixels per image);
    `user_keys`: dotted paths the user gave, left alone. anchors=False keeps the anchors
    (fine-tuning: the RPN learned its deltas for the file's anchors)."""
    heights = np.array([h for h, _ in image_hw], dtype=np.float64)
    widths = np.array([w for _, w in image_hw], dtype=np.float64)
    scales = input_scales(cfg, heights, widths) if len(image_hw) else np.zeros(0)
    wh = [np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1) * s
          for b, s in zip(boxes_per_image, scales) if len(b)]
    sizes_wh = np.clip(np.concatenate(wh), 1e-3, None) if wh else np.zeros((0, 2))
    side = np.sqrt(sizes_wh[:, 0] * sizes_wh[:, 1]) if len(sizes_wh) else np.zeros(1)
    fit = DataFit(num_objects=len(sizes_wh),
                  object_sizes=tuple(float(np.percentile(side, q)) for q in (5, 50, 95)),
                  max_per_image=max((len(b) for b in boxes_per_image), default=0))
    if not len(sizes_wh):
        return fit
    wanted: dict[str, object] = {}
    if anchors and cfg.backbone.kind == "fpn":  # the fit assumes one size per FPN level
        ratios = cfg.anchors.aspect_ratios
        fit.coverage = {b: anchor_coverage(sizes_wh, b, ratios) for b in BASE_SIZES}
        current = cfg.anchors.sizes[0]
        reference = fit.coverage.get(current, anchor_coverage(sizes_wh, current, ratios))
        fit.coverage[current] = reference
        top = max(fit.coverage.values())  # the largest base within NEAR_BEST of the best
        best = max(b for b, share in fit.coverage.items() if share >= top - NEAR_BEST)
        if fit.coverage[best] >= reference + MIN_GAIN and best != current:
            wanted[ANCHOR_KEY] = tuple(best * 2 ** level for level in range(5))
    need = math.ceil(fit.max_per_image * DETECTION_HEADROOM / 50) * 50
    heads, rpn = cfg.roi_heads, cfg.rpn
    if fit.max_per_image * DETECTION_HEADROOM > heads.detections_per_image:
        wanted["roi_heads.detections_per_image"] = need
        test_post = max(rpn.post_nms_top_n_test, 3 * need)
        train_post = max(rpn.post_nms_top_n_train, 2 * need)
        wanted["rpn.post_nms_top_n_test"] = test_post
        wanted["rpn.pre_nms_top_n_test"] = max(rpn.pre_nms_top_n_test, test_post)
        wanted["rpn.post_nms_top_n_train"] = train_post
        wanted["rpn.pre_nms_top_n_train"] = max(rpn.pre_nms_top_n_train, train_post)
    for key, value in wanted.items():
        old = _get(cfg, key)
        if old == value:
            continue
        if key in user_keys:
            fit.kept.append(key)
            continue
        _set(cfg, key, value)
        fit.changes[key] = (old, value)
    return fit


def _get(cfg: ModelConfig, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _set(cfg: ModelConfig, key: str, value: object) -> None:
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
