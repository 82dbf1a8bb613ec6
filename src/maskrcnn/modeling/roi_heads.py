"""RoI heads: sample RoIs, pool them, run the box and mask branches in parallel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import RoIHeadsConfig
from ..ops.box_coder import BoxCoder
from ..ops.boxes import box_iou
from ..ops.eager import chunked_inference
from ..ops.matcher import Matcher
from ..ops.sampler import BalancedSampler
from ..structures import Detections, Targets
from .box_head import BoxHead
from .mask_head import build_mask_head, mask_targets
from .poolers import MultiLevelRoIPooler

MASK_CHUNK = 25  # RoIs per mask-head call in the optimized model's inference


@dataclass
class SampledRoIs:
    """Training RoIs of each image with their ground truth.

    proposals: [R_i, 4]; labels: [R_i] int64 (0 = background); matched_idxs: [R_i] into the
    image's ground truth (0 for background); target_deltas: [R_i, 4].
    """

    proposals: list[Tensor]
    labels: list[Tensor]
    matched_idxs: list[Tensor]
    target_deltas: list[Tensor]


class RoIHeads(nn.Module):
    def __init__(self, cfg: RoIHeadsConfig, in_channels: int, scales: Sequence[float]) -> None:
        super().__init__()
        self.cfg = cfg
        pooler_args = dict(
            scales=scales,
            sampling_ratio=cfg.sampling_ratio,
            aligned=cfg.aligned,
            canonical_box_size=cfg.canonical_box_size,
            canonical_level=cfg.canonical_level,
            pooler=cfg.pooler,
        )
        self.box_pooler = MultiLevelRoIPooler(cfg.box_pooler_resolution, **pooler_args)
        self.mask_pooler = MultiLevelRoIPooler(cfg.mask_pooler_resolution, **pooler_args)
        if cfg.mask_target_region not in ("box", "pooler"):
            raise ValueError(f"roi_heads.mask_target_region must be 'box' or 'pooler', got "
                             f"{cfg.mask_target_region!r}")
        self.box_coder = BoxCoder(cfg.box_coder_weights)
        self.box_head = BoxHead(
            in_channels,
            cfg.box_pooler_resolution,
            cfg.representation_size,
            cfg.num_classes,
            self.box_coder,
            cfg.smooth_l1_beta,
            num_convs=cfg.box_head_convs,
            conv_channels=cfg.box_head_conv_channels,
            norm=cfg.box_head_norm,
            num_fcs=cfg.box_head_fcs,
        )
        self.mask_head = build_mask_head(cfg, in_channels)  # roi_heads.mask_head
        self.matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh)
        self.sampler = BalancedSampler(cfg.batch_size_per_image, cfg.positive_fraction)

    def sample(self, proposals: Sequence[Tensor], targets: Sequence[Targets]) -> SampledRoIs:
        """Add the ground-truth boxes to the proposals, match, and draw a balanced sample."""
        proposals_out, labels, matched_idxs = [], [], []
        for proposals_i, targets_i in zip(proposals, targets):
            gt_boxes = targets_i.boxes.to(proposals_i.dtype)
            proposals_i = torch.cat([proposals_i, gt_boxes])
            matched = self.matcher(box_iou(gt_boxes, proposals_i))  # [R_i]
            if gt_boxes.shape[0] == 0:
                labels_i = torch.zeros_like(matched)
            else:
                labels_i = targets_i.labels[matched.clamp(min=0)].to(torch.int64)
                labels_i[matched == Matcher.BELOW_LOW_THRESHOLD] = 0
                labels_i[matched == Matcher.BETWEEN_THRESHOLDS] = -1
            proposals_out.append(proposals_i)
            labels.append(labels_i)
            matched_idxs.append(matched.clamp(min=0))
        positives, negatives = self.sampler(labels)
        sampled = SampledRoIs([], [], [], [])
        for i, targets_i in enumerate(targets):
            keep = torch.where(positives[i] | negatives[i])[0]
            proposals_i, matched_i = proposals_out[i][keep], matched_idxs[i][keep]
            gt_boxes = targets_i.boxes.to(proposals_i.dtype)
            if gt_boxes.shape[0] == 0:
                gt_boxes = proposals_i.new_zeros((1, 4))
            sampled.proposals.append(proposals_i)
            sampled.labels.append(labels[i][keep])
            sampled.matched_idxs.append(matched_i)
            sampled.target_deltas.append(self.box_coder.encode(gt_boxes[matched_i], proposals_i))
        return sampled

    def losses(
        self, features: Sequence[Tensor], sampled: SampledRoIs, targets: Sequence[Targets]
    ) -> dict[str, Tensor]:
        """Box losses on all sampled RoIs, mask loss on the positive ones."""
        pooled = self.box_pooler(features, sampled.proposals)
        class_logits, box_deltas = self.box_head(pooled)
        labels = torch.cat(sampled.labels)
        losses = self.box_head.losses(
            class_logits, box_deltas, labels, torch.cat(sampled.target_deltas)
        )
        if all(t.masks is None for t in targets):  # box-only training
            return losses
        # Positives of the images that have masks (an image without them adds no mask loss).
        positive = [torch.where(labels_i > 0)[0] if t.masks is not None
                    else labels_i.new_zeros(0) for labels_i, t in zip(sampled.labels, targets)]
        positive_proposals = [p[k] for p, k in zip(sampled.proposals, positive)]
        positive_matched = [m[k] for m, k in zip(sampled.matched_idxs, positive)]
        mask_logits = self.mask_head(self.mask_pooler(features, positive_proposals))
        targets_masks = mask_targets(
            [t.masks if t.masks is not None else t.boxes.new_zeros(0, 1, 1) for t in targets],
            self.mask_target_boxes(positive_proposals),
            positive_matched,
            mask_logits.shape[-1],
            aligned=self.cfg.aligned,
            binarize=self.cfg.binarize_mask_targets,
        )
        positive_labels = torch.cat([lab[k] for lab, k in zip(sampled.labels, positive)])
        losses.update(self.mask_head.losses(mask_logits, targets_masks, positive_labels))
        return losses

    def mask_target_boxes(self, proposals: Sequence[Tensor]) -> list[Tensor]:
        """The boxes the mask targets are cropped over, per image [P_i, 4]: the RoIs
        ("box", the paper's "intersection between an RoI and its ground-truth mask") or the
        regions the mask pooler reads ("pooler"; the same boxes for RoIAlign)."""
        if self.cfg.mask_target_region == "pooler":
            return self.mask_pooler.sampled_regions(proposals)
        return list(proposals)

    def inference(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        score_thresh: float | None = None,
    ) -> list[Detections]:
        """Detections with [D, M, M] mask probabilities (not yet pasted) in `masks`;
        score_thresh defaults to cfg.score_thresh."""
        cfg = self.cfg
        class_logits, box_deltas = self.box_head(self.box_pooler(features, proposals))
        detections = self.box_head.inference(
            class_logits,
            box_deltas,
            proposals,
            image_sizes,
            cfg.score_thresh if score_thresh is None else score_thresh,
            cfg.nms_thresh,
            cfg.detections_per_image,
        )
        pooled = self.mask_pooler(features, [d.boxes for d in detections])  # [D, C, S, S]
        mask_probs = self._mask_probs(pooled, torch.cat([d.labels for d in detections]))
        for det, probs in zip(detections, mask_probs.split([len(d) for d in detections])):
            det.masks = probs
        return detections

    def _mask_probs(self, pooled: Tensor, labels: Tensor) -> Tensor:
        """[D, C, S, S] pooled RoIs -> [D, M, M] probabilities of each one's class. The
        optimized model (channels_last RoIs, eager inference) runs MASK_CHUNK RoIs at a
        time: for 100 RoIs of 256 channels the deconv's output is 77 MiB, the logits of
        91 classes 27 MiB, of which one channel per RoI is kept."""
        if not chunked_inference(pooled, MASK_CHUNK):
            return self.mask_head.inference(self.mask_head(pooled), labels)
        return torch.cat([self.mask_head.inference(self.mask_head(part), part_labels) for
                          part, part_labels in zip(pooled.split(MASK_CHUNK),
                                                   labels.split(MASK_CHUNK))])
