"""Box branch: a few convs and fully connected layers, class scores and class-specific box
deltas."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.box_coder import BoxCoder
from ..ops.boxes import batched_nms, clip_boxes, remove_small_boxes
from ..ops.eager import chunked_inference
from ..structures import Detections
from .fpn import CONV_NORMS, conv_norm
from .losses import box_regression_loss, full_precision

BOX_CHUNK = 250  # RoIs per box-head call in the optimized model's inference


class BoxHead(nn.Module):
    """`num_convs` 3x3 convs (+ norm) + ReLU, flatten, `num_fcs` fc + ReLU, then K class
    logits and K*4 box deltas.

    The defaults are the paper's and torchvision v1's "2fc" head: fc(1024) - ReLU -
    fc(1024) - ReLU. torchvision v2 (FastRCNNConvFCHead) has 4 convs of 256 with BatchNorm
    and one fc. Keys: `convs.{i}` (`convs.{i}.norm` with a norm), `fc1`, `fc2`, ...
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        representation_size: int,
        num_classes: int,
        box_coder: BoxCoder,
        smooth_l1_beta: float,
        *,
        num_convs: int = 0,
        conv_channels: int = 256,
        norm: str = "none",
        num_fcs: int = 2,
    ) -> None:
        super().__init__()
        if num_convs < 0 or num_fcs < 0:
            raise ValueError(f"box head layer counts must be >= 0, got {num_convs} convs and "
                             f"{num_fcs} fcs")
        if norm not in CONV_NORMS:  # also without convs: a config error, not silence
            raise ValueError(f"unknown box head norm {norm!r}; choose one of {CONV_NORMS}")
        self.convs = nn.ModuleList(
            conv_norm(in_channels if i == 0 else conv_channels, conv_channels, 3, norm,
                      what="box head")
            for i in range(num_convs)
        )
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.constant_(conv.bias, 0)
        features = (conv_channels if num_convs else in_channels) * resolution * resolution
        self.num_fcs = num_fcs
        for index in range(num_fcs):
            self.add_module(f"fc{index + 1}", nn.Linear(features, representation_size))
            features = representation_size
        self.cls_score = nn.Linear(features, num_classes)
        self.bbox_pred = nn.Linear(features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.smooth_l1_beta = smooth_l1_beta

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """[R, C, S, S] pooled features -> class logits [R, K], box deltas [R, K*4].

        The optimized model (channels_last RoIs, eager inference) runs BOX_CHUNK RoIs at a
        time: flattening channels_last RoIs for fc6 copies them (1000 RoIs of 256 x 7 x 7:
        48 MiB)."""
        if not chunked_inference(pooled, BOX_CHUNK):
            return self._forward(pooled)
        parts = [self._forward(part) for part in pooled.split(BOX_CHUNK)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        x = pooled
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)  # [R, C', S, S]
        x = x.flatten(1)  # [R, C' * S * S]
        for index in range(self.num_fcs):
            x = F.relu(getattr(self, f"fc{index + 1}")(x), inplace=True)
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
