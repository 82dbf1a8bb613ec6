"""The whole model: backbone + FPN (or C4 / C5 alone), RPN, RoI heads (box and mask in
parallel)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops.heap import release_free_heap
from ..ops.mask_paste_grid import check_mask_paste
from ..structures import Detections, Targets
from .backbone import build_backbone, build_res5, fold_frozen_batchnorm
from .fusion import fuse_conv_relu
from .res5_heads import Res5RoIHeads
from .roi_heads import RoIHeads
from .rpn import RPN
from .transform import InputTransform


class MaskRCNN(nn.Module):
    """Mask R-CNN (He et al., 2017).

    Images are float RGB tensors [3, H, W] in [0, 1], each of any size. In training mode
    `forward(images, targets)` returns the losses; in eval mode `forward(images)` returns
    one `Detections` per image in original-image pixels. `compute_losses` works in either
    mode (for validation loss).

    backbone.kind (the paper's Table 2 variants): "fpn" (RPN on P2..P6, RoIs from P2..P5),
    "c4" (RPN and RoIs on C4, res5 per RoI: modeling/res5_heads.py) or "c5" (RPN and RoIs on
    C5, the FPN model's box and mask heads on C5: RoIs pooled 7 x 7 for the 2-fc box head
    and 14 x 14 for the FCN mask head; the paper's Table 2d "RoIs on C5", stride 32).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        check_mask_paste(cfg.roi_heads.mask_paste)  # read at each predict (transform.py)
        self.transform = InputTransform(cfg.input)
        self.backbone = build_backbone(cfg.backbone)
        strides = self.backbone.strides
        self.rpn = RPN(cfg.rpn, cfg.anchors, self.backbone.out_channels, strides)
        # FPN: RoIs are pooled from P2..P5 (not P6); C4 / C5: from the one level
        self.num_roi_levels = min(len(strides), 4)
        pooled_scales = [1.0 / s for s in strides[: self.num_roi_levels]]
        if cfg.backbone.kind == "c4":
            res5_channels = 2 * self.backbone.out_channels  # res5 doubles C4's channels
            self.roi_heads = Res5RoIHeads(cfg.roi_heads, build_res5(cfg.backbone),
                                          res5_channels, pooled_scales[0])
        else:
            self.roi_heads = RoIHeads(cfg.roi_heads, self.backbone.out_channels,
                                      pooled_scales)
        self.inference_optimized = False

    @property
    def class_names(self) -> tuple[str, ...]:
        """The name of each label (index = label, 0 = background); empty when unknown."""
        return self.cfg.class_names

    def optimize_for_inference(self) -> MaskRCNN:
        """Fold BatchNorm (frozen, or with running statistics) into the convolutions of the
        backbone and heads, fuse the ReLUs (and residual adds) that follow them into the
        convolutions (modeling/fusion.py), and switch to channels_last.

        About twice as fast on CPU; outputs equal the exact model's to float rounding
        (features within ~1e-5 relative), so near-tied detections may swap. Irreversible:
        the folded model can no longer be trained or saved as a checkpoint.
        """
        fold_frozen_batchnorm(self)
        fuse_conv_relu(self)
        self.to(memory_format=torch.channels_last)
        self.inference_optimized = True
        return self.eval()

    def train(self, mode: bool = True) -> MaskRCNN:
        if mode and self.inference_optimized:
            raise RuntimeError("a model after optimize_for_inference() cannot be trained")
        return super().train(mode)

    def _features(self, batch: Tensor) -> list[Tensor]:
        if self.inference_optimized:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.backbone(batch)

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[Targets] | None = None
    ) -> dict[str, Tensor] | list[Detections]:
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() to predict")
            return self.compute_losses(images, targets)
        return self.predict(images)

    def compute_losses(
        self, images: Sequence[Tensor], targets: Sequence[Targets]
    ) -> dict[str, Tensor]:
        """All losses: RPN objectness and box, then box classification, box and mask."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        image_list, targets = self.transform(images, targets, training=True)
        features = self._features(image_list.tensors)
        logits, deltas, anchors = self.rpn(features, image_list.tensors.shape[-2:])
        proposals = self.rpn.inference(
            logits, deltas, anchors, image_list.image_sizes, training=True
        )
        losses = self.rpn.losses(logits, deltas, anchors, [t.boxes for t in targets])
        sampled = self.roi_heads.sample(proposals, targets)
        losses.update(self.roi_heads.losses(features[: self.num_roi_levels], sampled, targets))
        return losses

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], soft_masks: bool = False,
                score_thresh: float | None = None) -> list[Detections]:
        """Detections per image; masks [D, H, W] bool, or float in [0, 1] if soft_masks.
        score_thresh: this call's box score threshold (default: cfg.roi_heads.score_thresh)."""
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = self.transform(images, None, training=False)
        image_sizes, on_cpu = image_list.image_sizes, image_list.tensors.is_cpu
        detections = self._detect(image_list.tensors, image_sizes, score_thresh)
        del image_list  # the padded batch; the feature maps died with _detect's frame
        if on_cpu:
            release_free_heap()
        return self.transform.postprocess(
            detections,
            image_sizes,
            original_sizes,
            self.cfg.roi_heads.mask_threshold,
            soft_masks=soft_masks,
            mask_paste=self.cfg.roi_heads.mask_paste,
        )

    def _detect(self, batch: Tensor, image_sizes: list[tuple[int, int]],
                score_thresh: float | None) -> list[Detections]:
        """Detections in the resized images' pixels, masks still [D, M, M]: its feature maps
        are freed on return, before the masks are pasted at full size."""
        features = self._features(batch)
        logits, deltas, anchors = self.rpn(features, batch.shape[-2:])
        proposals = self.rpn.inference(logits, deltas, anchors, image_sizes, training=False)
        return self.roi_heads.inference(features[: self.num_roi_levels], proposals,
                                        image_sizes, score_thresh=score_thresh)


def build_model(cfg: ModelConfig) -> MaskRCNN:
    """The one builder from a config to a model."""
    return MaskRCNN(cfg)
