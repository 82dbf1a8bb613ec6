"""RoI heads of the C4 models (backbone.kind c4): res5 per RoI, as the paper's ResNet-C4
(Faster R-CNN's C4 head) and detectron2's Res5ROIHeads build them.

Every RoI is pooled 2S x 2S from C4 (stride 16; S = roi_heads.box_pooler_resolution, 7, so
14 x 14) with `roi_heads.pooler`, then ResNet's layer4 (`res5`, stride 2 in its first
block) runs on it -> [R, 2048 (512 for ResNet-18/34), S, S]. The box branch averages that
over space and predicts class logits and class-specific deltas with one linear layer each
(detectron2's FastRCNNOutputLayers: a BoxHead with no convs and no fcs). The mask branch is
a 2x deconv (roi_heads.mask_head_channels, 256, + ReLU) on the res5 features and a 1x1 conv
to K mask logits (detectron2's MaskRCNNConvUpsampleHead with NUM_CONV 0: a MaskHead with no
convs), so masks are 2S x 2S (14 x 14). In training the mask branch reads the res5 features
the box branch computed, of the positive RoIs; at inference res5 runs again on the final
boxes (detectron2's forward_with_given_boxes). roi_heads.mask_head_convs / mask_head_norm
are not used (no convs); only the "fcn" mask head exists here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..config import RoIHeadsConfig
from ..ops.box_coder import BoxCoder
from ..ops.matcher import Matcher
from ..ops.sampler import BalancedSampler
from ..structures import Detections, Targets
from .box_head import BoxHead
from .mask_head import MaskHead, mask_targets
from .poolers import MultiLevelRoIPooler
from .roi_heads import RoIHeads, SampledRoIs


class Res5RoIHeads(RoIHeads):
    """Pooling from C4, res5 per RoI, a linear box predictor and a deconv mask head (see the
    module docstring). `sample` and `mask_target_boxes` are RoIHeads'; `box_pooler` and
    `mask_pooler` are the same pooler. Keys: `res5.*` (ResNet `layer4.*`),
    `box_head.cls_score` / `bbox_pred`, `mask_head.deconv` / `predictor`.

    res5: ResNet layer4 (backbone.build_res5); res5_channels: its output channels;
    scale: C4's spatial scale (1/16).
    """

    def __init__(self, cfg: RoIHeadsConfig, res5: nn.Module, res5_channels: int,
                 scale: float = 1.0 / 16) -> None:
        nn.Module.__init__(self)  # RoIHeads.__init__ would build the FPN heads
        self.cfg = cfg
        if cfg.mask_head != "fcn":
            raise ValueError(f"roi_heads.mask_head {cfg.mask_head!r}: backbone.kind c4 has "
                             "its own deconv mask head on res5; use 'fcn'")
        if cfg.mask_target_region not in ("box", "pooler"):
            raise ValueError(f"roi_heads.mask_target_region must be 'box' or 'pooler', got "
                             f"{cfg.mask_target_region!r}")
        self.box_pooler = MultiLevelRoIPooler(
            2 * cfg.box_pooler_resolution, scales=[scale], sampling_ratio=cfg.sampling_ratio,
            aligned=cfg.aligned, canonical_box_size=cfg.canonical_box_size,
            canonical_level=cfg.canonical_level, pooler=cfg.pooler,
        )
        self.mask_pooler = self.box_pooler  # one pooling for both branches
        self.res5 = res5
        self.box_coder = BoxCoder(cfg.box_coder_weights)
        self.box_head = BoxHead(res5_channels, 1, cfg.representation_size, cfg.num_classes,
                                self.box_coder, cfg.smooth_l1_beta, num_convs=0, num_fcs=0)
        self.mask_head = MaskHead(res5_channels, cfg.mask_head_channels, 0, cfg.num_classes,
                                  class_agnostic=cfg.class_agnostic_mask,
                                  mask_loss=cfg.mask_loss, norm=cfg.mask_head_norm)
        self.matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh)
        self.sampler = BalancedSampler(cfg.batch_size_per_image, cfg.positive_fraction)

    def roi_features(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """features: [C4]; boxes: [L_i, 4] per image -> res5 features [sum L_i, C5, S, S]."""
        return self.res5(self.box_pooler(list(features), list(boxes)))

    def box_outputs(self, res5_features: Tensor) -> tuple[Tensor, Tensor]:
        """[R, C5, S, S] -> class logits [R, K], box deltas [R, K*4]."""
        return self.box_head(res5_features.mean(dim=(2, 3), keepdim=True))  # [R, C5, 1, 1]

    def losses(
        self, features: Sequence[Tensor], sampled: SampledRoIs, targets: Sequence[Targets]
    ) -> dict[str, Tensor]:
        """Box losses on all sampled RoIs, mask loss on the positive ones' res5 features."""
        res5_features = self.roi_features(features, sampled.proposals)
        class_logits, box_deltas = self.box_outputs(res5_features)
        labels = torch.cat(sampled.labels)
        losses = self.box_head.losses(
            class_logits, box_deltas, labels, torch.cat(sampled.target_deltas)
        )
        if all(t.masks is None for t in targets):  # box-only training
            return losses
        # Positives of the images that have masks, per image and as rows of res5_features.
        positive = [torch.where(labels_i > 0)[0] if t.masks is not None
                    else labels_i.new_zeros(0) for labels_i, t in zip(sampled.labels, targets)]
        offsets = [0, *torch.tensor([len(p) for p in sampled.proposals]).cumsum(0).tolist()]
        rows = torch.cat([k + offset for k, offset in zip(positive, offsets)])  # [P]
        mask_logits = self.mask_head(res5_features[rows])  # [P, K, 2S, 2S]
        positive_proposals = [p[k] for p, k in zip(sampled.proposals, positive)]
        targets_masks = mask_targets(
            [t.masks if t.masks is not None else t.boxes.new_zeros(0, 1, 1) for t in targets],
            self.mask_target_boxes(positive_proposals),
            [m[k] for m, k in zip(sampled.matched_idxs, positive)],
            mask_logits.shape[-1],
            aligned=self.cfg.aligned,
            binarize=self.cfg.binarize_mask_targets,
        )
        losses.update(self.mask_head.losses(mask_logits, targets_masks, labels[rows]))
        return losses

    def inference(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        score_thresh: float | None = None,
    ) -> list[Detections]:
        """Detections with [D, 2S, 2S] mask probabilities (not yet pasted) in `masks`."""
        cfg = self.cfg
        class_logits, box_deltas = self.box_outputs(self.roi_features(features, proposals))
        detections = self.box_head.inference(
            class_logits,
            box_deltas,
            proposals,
            image_sizes,
            cfg.score_thresh if score_thresh is None else score_thresh,
            cfg.nms_thresh,
            cfg.detections_per_image,
        )
        boxes = [d.boxes for d in detections]
        mask_logits = self.mask_head(self.roi_features(features, boxes))
        mask_probs = self.mask_head.inference(mask_logits, torch.cat([d.labels for d in
                                                                      detections]))
        for det, probs in zip(detections, mask_probs.split([len(d) for d in detections])):
            det.masks = probs
        return detections
