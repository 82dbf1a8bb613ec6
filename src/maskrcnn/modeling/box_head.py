"""Box branch: two fully connected layers, class scores and class-specific box deltas."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.box_coder import BoxCoder
from ..ops.boxes import batched_nms, clip_boxes, remove_small_boxes
from ..structures import Detections
from .rpn import _box_regression_loss


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
        classification_loss = F.cross_entropy(class_logits, labels)
        positive = torch.where(labels > 0)[0]
        # [R, K*4] -> [R, K, 4], then the row of each positive's class
        deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[positive, labels[positive]]
        box_loss = _box_regression_loss(deltas, target_deltas[positive], self.smooth_l1_beta)
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
        """Per-class boxes and scores, score threshold, class-wise NMS, top detections."""
        num_classes = class_logits.shape[-1]
        boxes = self.box_coder.decode(box_deltas, torch.cat(proposals))  # [R, K, 4]
        scores = F.softmax(class_logits, -1)  # [R, K]
        counts = [p.shape[0] for p in proposals]
        detections = []
        for boxes_i, scores_i, image_size in zip(
            boxes.split(counts), scores.split(counts), image_sizes
        ):
            boxes_i = clip_boxes(boxes_i, image_size)
            labels_i = torch.arange(num_classes, device=scores_i.device).expand_as(scores_i)
            # drop background, then every (RoI, class) pair is a candidate:
            # [R_i, K-1, 4] -> [R_i*(K-1), 4]
            boxes_i = boxes_i[:, 1:].reshape(-1, 4)
            scores_i = scores_i[:, 1:].reshape(-1)
            labels_i = labels_i[:, 1:].reshape(-1)
            keep = torch.where(scores_i > score_thresh)[0]
            boxes_i, scores_i, labels_i = boxes_i[keep], scores_i[keep], labels_i[keep]
            keep = remove_small_boxes(boxes_i, 1e-2)
            boxes_i, scores_i, labels_i = boxes_i[keep], scores_i[keep], labels_i[keep]
            keep = batched_nms(boxes_i, scores_i, labels_i, nms_thresh)[:detections_per_image]
            detections.append(Detections(boxes_i[keep], scores_i[keep], labels_i[keep]))
        return detections
