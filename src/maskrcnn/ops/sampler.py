"""Sample a fixed-size, class-balanced subset of anchors or proposals per image."""

from __future__ import annotations

import torch
from torch import Tensor


class BalancedSampler:
    """Pick up to batch_size_per_image elements per image, at most
    int(batch_size_per_image * positive_fraction) of them positive, the rest negative.

    Random numbers are drawn exactly as torchvision's BalancedPositiveNegativeSampler does
    (one torch.randperm over the positives, then one over the negatives, per image), so the
    same torch seed picks the same elements.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels_per_image: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """labels_per_image: [A_i] per image; >= 1 positive, 0 negative, -1 ignored.

        Returns per-image bool masks [A_i] of the sampled positives and negatives.
        """
        positives, negatives = [], []
        for labels in labels_per_image:
            pos_idx = torch.where(labels >= 1)[0]
            neg_idx = torch.where(labels == 0)[0]
            num_pos = min(pos_idx.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(neg_idx.numel(), self.batch_size_per_image - num_pos)
            pos_pick = pos_idx[torch.randperm(pos_idx.numel(), device=labels.device)[:num_pos]]
            neg_pick = neg_idx[torch.randperm(neg_idx.numel(), device=labels.device)[:num_neg]]
            pos_mask = torch.zeros_like(labels, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels, dtype=torch.bool)
            pos_mask[pos_pick] = True
            neg_mask[neg_pick] = True
            positives.append(pos_mask)
            negatives.append(neg_mask)
        return positives, negatives
