"""Region proposal network: objectness and box deltas for every anchor, proposals, losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AnchorConfig, RPNConfig
from ..ops.box_coder import BoxCoder
from ..ops.boxes import batched_nms, box_iou, clip_boxes, remove_small_boxes
from ..ops.matcher import Matcher
from ..ops.sampler import BalancedSampler
from .anchors import AnchorGenerator
from .fusion import conv_relu
from .losses import box_regression_loss, full_precision


class RPNHead(nn.Module):
    """`num_convs` 3x3 convs + ReLU shared by all levels, then 1x1 convs for A logits and 4A
    deltas. The first conv is `conv` (the key of torchvision's v1 head), the others (one in
    torchvision's v2 head) `extra_convs.{i}`."""

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int = 1) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"the RPN head needs at least one conv, got head_convs={num_convs}")
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
            for _ in range(num_convs - 1)
        )
        self.fuse_relu = False  # fusion.fuse_conv_relu: each conv + relu in one call
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, *self.extra_convs, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward_level(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """One level [B, C, H, W] -> logits [B, HWA] and deltas [B, HWA, 4] in (y, x, anchor)
        order."""
        hidden = feature
        for conv in (self.conv, *self.extra_convs):
            hidden = conv_relu(conv, hidden) if self.fuse_relu else F.relu(conv(hidden))
        logits = self.objectness_logits(hidden)  # [B, A, H, W]
        deltas = self.anchor_deltas(hidden)  # [B, A*4, H, W]
        batch, num_anchors, height, width = logits.shape
        # [B, A, H, W] -> [B, H, W, A] -> [B, HWA]
        logits = logits.permute(0, 2, 3, 1).reshape(batch, -1)
        # [B, A*4, H, W] -> [B, A, 4, H, W] -> [B, H, W, A, 4] -> [B, HWA, 4]
        deltas = deltas.view(batch, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2)
        return logits, deltas.reshape(batch, -1, 4)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns objectness logits [B, R] and deltas [B, R, 4] over all levels, where
        R = sum_l H_l * W_l * A in (level, y, x, anchor) order."""
        logits_per_level, deltas_per_level = zip(*(self.forward_level(f) for f in features))
        return torch.cat(logits_per_level, dim=1), torch.cat(deltas_per_level, dim=1)


class RPN(nn.Module):
    """Anchors, head, proposal selection and the RPN losses."""

    def __init__(
        self, cfg: RPNConfig, anchor_cfg: AnchorConfig, in_channels: int, strides: Sequence[int]
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # FPN: one size per level; one level (C4 / C5): all sizes on it
        sizes = [tuple(anchor_cfg.sizes)] if len(strides) == 1 else anchor_cfg.sizes
        self.anchor_generator = AnchorGenerator(
            sizes,
            anchor_cfg.aspect_ratios,
            strides,
            round_cell_anchors=anchor_cfg.round_cell_anchors,
            strides_from_grid=anchor_cfg.strides_from_grid,
        )
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors_per_location,
                            cfg.head_convs)
        self.box_coder = BoxCoder(cfg.box_coder_weights)
        self.matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(cfg.batch_size_per_image, cfg.positive_fraction)

    def forward(
        self, features: Sequence[Tensor], padded_image_size: Sequence[int]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Raw outputs: objectness logits [B, R], deltas [B, R, 4], anchors per level."""
        logits, deltas = self.head(features)
        anchors_per_level = self.anchor_generator(features, padded_image_size)
        return logits, deltas, anchors_per_level

    def inference(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors_per_level: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        training: bool,
    ) -> list[Tensor]:
        """Proposals per image [P_i, 4]: top-n per level, clip, drop small, NMS per level,
        top-n per image. Nothing here is differentiated."""
        cfg = self.cfg
        pre_nms_top_n = cfg.pre_nms_top_n_train if training else cfg.pre_nms_top_n_test
        post_nms_top_n = cfg.post_nms_top_n_train if training else cfg.post_nms_top_n_test
        logits, deltas = logits.detach(), deltas.detach()
        anchors = torch.cat(anchors_per_level)  # [R, 4]
        num_images = logits.shape[0]

        top_idx, levels = [], []
        offset = 0
        for level, anchors_in_level in enumerate(anchors_per_level):
            count = anchors_in_level.shape[0]
            k = min(pre_nms_top_n, count)
            _, idx = logits[:, offset : offset + count].topk(k, dim=1)  # [B, k]
            top_idx.append(idx + offset)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
            offset += count
        top_idx = torch.cat(top_idx, dim=1)  # [B, N]
        levels = torch.cat(levels)  # [N]
        batch_idx = torch.arange(num_images, device=logits.device)[:, None]
        scores = torch.sigmoid(logits[batch_idx, top_idx])  # [B, N]
        # [B, N, 4] deltas of the selected anchors -> [B*N, 4] boxes -> [B, N, 4]
        boxes = self.box_coder.decode(
            deltas[batch_idx, top_idx].reshape(-1, 4), anchors[top_idx].reshape(-1, 4)
        ).view(num_images, -1, 4)

        proposals = []
        for boxes_i, scores_i, image_size in zip(boxes, scores, image_sizes):
            boxes_i = clip_boxes(boxes_i, image_size)
            keep = remove_small_boxes(boxes_i, cfg.min_box_size)
            boxes_i, scores_i, levels_i = boxes_i[keep], scores_i[keep], levels[keep]
            keep = torch.where(scores_i >= cfg.score_thresh)[0]
            boxes_i, scores_i, levels_i = boxes_i[keep], scores_i[keep], levels_i[keep]
            keep = batched_nms(boxes_i, scores_i, levels_i, cfg.nms_thresh)[:post_nms_top_n]
            proposals.append(boxes_i[keep])
        return proposals

    def losses(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors_per_level: list[Tensor],
        gt_boxes_per_image: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Objectness BCE and box regression over a balanced sample of anchors."""
        anchors = torch.cat(anchors_per_level)  # [R, 4]
        labels, matched_gt_boxes = [], []
        for gt_boxes in gt_boxes_per_image:
            matched_idxs = self.matcher(box_iou(gt_boxes.to(anchors.dtype), anchors))
            labels_i = (matched_idxs >= 0).to(anchors.dtype)  # float32 (float64)
            labels_i[matched_idxs == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(labels_i)
            if gt_boxes.numel() == 0:
                matched_gt_boxes.append(torch.zeros_like(anchors))
            else:
                matched_gt_boxes.append(gt_boxes.to(anchors.dtype)[matched_idxs.clamp(min=0)])
        positives, negatives = self.sampler(labels)
        positive_idx = torch.where(torch.cat(positives))[0]
        sampled_idx = torch.cat([positive_idx, torch.where(torch.cat(negatives))[0]])

        # regression targets of the positive anchors only: [P, 4]
        num_anchors = anchors.shape[0]
        matched_gt = torch.cat(matched_gt_boxes)[positive_idx]
        target_deltas = self.box_coder.encode(matched_gt, anchors[positive_idx % num_anchors])
        box_loss = box_regression_loss(
            deltas.reshape(-1, 4)[positive_idx], target_deltas, self.cfg.smooth_l1_beta
        ) / max(sampled_idx.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(
            full_precision(logits.reshape(-1)[sampled_idx]), torch.cat(labels)[sampled_idx]
        )
        return {"loss_rpn_objectness": objectness_loss, "loss_rpn_box": box_loss}
