"""Box branch: two fully connected layers, class scores and class-specific box deltas."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.box_coder import BoxCoder
from ..ops.boxes import batched_nms, clip_boxes, remove_small_boxes
from ..structures import Detections
from .losses import box_regression_loss, full_precision


class BoxHead(nn.Module):
    """fc(1024) - ReLU - fc(1024) - ReLU, then K class logits and K*4 box deltas."""

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        representation_size: int,
        num_classes: int,
        box_coder: BoxCoder,
        smooth_l1_beta: float,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * resolution * resolution, representation_size)
        self.fc2 = nn.Linear(representation_size, representation_size)
        self.cls_score = nn.Linear(representation_size, num_classes)
        self.bbox_pred = nn.Linear(representation_size, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.smooth_l1_beta = smooth_l1_beta

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """[R, C, S, S] pooled features -> class logits [R, K], box deltas [R, K*4]."""
        x = F.relu(self.fc1(pooled.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.cls_score(x), self.bbox_pred(x)

    def losses(
        self, class_logits: Tensor, box_deltas: Tensor, labels: Tensor, target_deltas: Tensor
    ) -> dict[str, Tensor]:
        """Cross-entropy over the sampled RoIs; box loss on the ground-truth class of the
        positives, normalised by the number of sampled RoIs.

        labels: [R] int64 (0 = background); target_deltas: [R, 4].
        """
        classification_loss = F.cross_entropy(full_precision(class_logits), labels)
        positive = torch.where(labels > 0)[0]
        # [R, K*4] -> [R, K, 4], then the row of each positive's class
        deltas = box_deltas.reshape(box_deltas.shape[0], self.num_classes, 4)
        deltas = deltas[positive, labels[positive]]
        box_loss = box_regression_loss(deltas, target_deltas[positive], self.smooth_l1_beta)
        return {
            "loss_cls": classification_loss,
            "loss_box": box_loss / max(labels.numel(), 1),
        }

    def inference(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        score_thresh: float,
        nms_thresh: float,
        detections_per_image: int,
    ) -> list[Detections]:
        """Per-class boxes and scores, score threshold, class-wise NMS, top detections.

        Only the (RoI, class) pairs above the score threshold are decoded and clipped; the
        result equals decoding all of them first (the order of candidates is kept).
        """
        scores = F.softmax(class_logits, -1)  # [R, K]
        # [R, K*4] -> [R, K, 4]
        box_deltas = box_deltas.reshape(box_deltas.shape[0], self.num_classes, 4)
        counts = [p.shape[0] for p in proposals]
        detections = []
        for scores_i, deltas_i, proposals_i, image_size in zip(
            scores.split(counts), box_deltas.split(counts), proposals, image_sizes
        ):
            # candidates in (RoI, class) row-major order, background excluded
            roi_idx, class_idx = torch.where(scores_i[:, 1:] > score_thresh)
            labels_i = class_idx + 1
            scores_c = scores_i[roi_idx, labels_i]
            boxes_c = self.box_coder.decode(deltas_i[roi_idx, labels_i], proposals_i[roi_idx])
            boxes_c = clip_boxes(boxes_c[:, 0], image_size)  # [N, 1, 4] -> [N, 4]
            keep = remove_small_boxes(boxes_c, 1e-2)
            boxes_c, scores_c, labels_i = boxes_c[keep], scores_c[keep], labels_i[keep]
            keep = batched_nms(boxes_c, scores_c, labels_i, nms_thresh)[:detections_per_image]
            detections.append(Detections(boxes_c[keep], scores_c[keep], labels_i[keep]))
        return detections
