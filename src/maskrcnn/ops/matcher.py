"""Assign each prediction (anchor or proposal) to at most one ground-truth box."""

from __future__ import annotations

import torch
from torch import Tensor


class Matcher:
    """Match predictions to ground truth by a quality matrix (usually IoU).

    Result per prediction: the index of its best ground truth when that quality is
    >= high_threshold, BELOW_LOW_THRESHOLD (-1) when < low_threshold, and
    BETWEEN_THRESHOLDS (-2) otherwise. With allow_low_quality_matches, every ground truth
    also keeps its highest-quality predictions (ties included): those predictions get their
    own best ground truth back even when below the thresholds (torchvision's semantics).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ) -> None:
        if low_threshold > high_threshold:
            raise ValueError("low_threshold must be <= high_threshold")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """match_quality_matrix [G, P] (gt x predictions) -> matches [P] int64.

        G == 0 gives all BELOW_LOW_THRESHOLD (every prediction is background).
        """
        num_gt, num_pred = match_quality_matrix.shape
        device = match_quality_matrix.device
        if num_gt == 0 or num_pred == 0:
            return torch.full((num_pred,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64,
                              device=device)

        best_quality, best_gt = match_quality_matrix.max(dim=0)  # [P], [P]
        matches = best_gt.clone()
        matches[best_quality < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (best_quality >= self.low_threshold) & (best_quality < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS

        if self.allow_low_quality_matches:
            best_per_gt = match_quality_matrix.max(dim=1).values  # [G]
            # [G, P] -> [P]: prediction is (one of) the best of some gt
            is_best_of_a_gt = (match_quality_matrix == best_per_gt[:, None]).any(dim=0)
            matches = torch.where(is_best_of_a_gt, best_gt, matches)
        return matches
