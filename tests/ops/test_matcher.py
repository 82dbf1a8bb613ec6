import pytest
import torch
from torchvision.models.detection._utils import Matcher as TorchvisionMatcher

from maskrcnn.ops.boxes import box_iou
from maskrcnn.ops.matcher import Matcher

BELOW, BETWEEN = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS


def test_constants():
    assert (BELOW, BETWEEN) == (-1, -2)


def test_thresholds_and_between():
    quality = torch.tensor([
        [0.9, 0.5, 0.1, 0.35, 0.0, 0.7],
        [0.2, 0.6, 0.05, 0.3, 0.71, 0.69],
    ])
    matches = Matcher(0.7, 0.3)(quality)
    assert matches.dtype == torch.int64
    # 0.7 is high (>= high), 0.3 is between (>= low)
    assert matches.tolist() == [0, BETWEEN, BELOW, BETWEEN, 1, 0]
    # equal thresholds: nothing is between
    assert Matcher(0.5, 0.5)(quality).tolist() == [0, 1, BELOW, BELOW, 1, 0]


def test_low_quality_matches_with_ties():
    quality = torch.tensor([
        [0.4, 0.4, 0.1, 0.2, 0.0],
        [0.1, 0.2, 0.25, 0.25, 0.1],
    ])
    assert Matcher(0.7, 0.3)(quality).tolist() == [BETWEEN, BETWEEN, BELOW, BELOW, BELOW]
    # every gt keeps all of its best predictions, ties included
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    assert matcher(quality).tolist() == [0, 0, 1, 1, BELOW]


def test_low_quality_match_takes_the_predictions_own_best_gt():
    # gt 0's best prediction is 0, but prediction 0 overlaps gt 1 more: it gets gt 1.
    quality = torch.tensor([[0.5, 0.1], [0.6, 0.2]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality).tolist() == [1, BELOW]


def test_empty_ground_truth_and_predictions():
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    matches = matcher(torch.zeros(0, 6))
    assert matches.tolist() == [BELOW] * 6 and matches.dtype == torch.int64
    assert matcher(torch.zeros(3, 0)).shape == (0,)
    with pytest.raises(ValueError):
        Matcher(0.3, 0.7)


@pytest.mark.parametrize("allow_low_quality", [False, True])
@pytest.mark.parametrize("thresholds", [(0.7, 0.3), (0.5, 0.5)])
def test_random_equality_with_torchvision(allow_low_quality, thresholds):
    gen = torch.Generator().manual_seed(0)
    ours = Matcher(*thresholds, allow_low_quality_matches=allow_low_quality)
    ref = TorchvisionMatcher(*thresholds, allow_low_quality_matches=allow_low_quality)
    for trial in range(20):
        num_gt, num_pred = int(torch.randint(1, 8, (1,), generator=gen)), 300
        xy = torch.rand(num_gt + num_pred, 2, generator=gen) * 100
        boxes = torch.cat((xy, xy + 5 + torch.rand(num_gt + num_pred, 2, generator=gen) * 60), 1)
        quality = box_iou(boxes[:num_gt], boxes[num_gt:])
        if trial % 2:
            quality = (quality * 10).round() / 10  # many exact ties
        assert torch.equal(ours(quality), ref(quality))
