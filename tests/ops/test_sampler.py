import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from maskrcnn.ops.sampler import BalancedSampler


def make_labels(num_pos: int, num_neg: int, num_ignored: int, gen: torch.Generator):
    labels = torch.cat((torch.randint(1, 5, (num_pos,), generator=gen),
                        torch.zeros(num_neg, dtype=torch.int64),
                        torch.full((num_ignored,), -1, dtype=torch.int64)))
    return labels[torch.randperm(len(labels), generator=gen)]


@pytest.mark.parametrize("counts,expected", [
    ((300, 1000, 50), (128, 384)),  # many positives: capped at batch * fraction
    ((20, 1000, 50), (20, 492)),  # few positives: negatives fill the batch
    ((300, 10, 50), (128, 10)),  # few negatives: batch stays short
    ((0, 0, 7), (0, 0)),
    ((0, 600, 0), (0, 512)),
])
def test_counts(counts, expected):
    gen = torch.Generator().manual_seed(0)
    labels = make_labels(*counts, gen)
    pos, neg = BalancedSampler(512, 0.25)([labels])
    assert pos[0].dtype == torch.bool and pos[0].shape == labels.shape
    assert (int(pos[0].sum()), int(neg[0].sum())) == expected
    assert (labels[pos[0]] >= 1).all() and (labels[neg[0]] == 0).all()
    assert not (pos[0] & neg[0]).any()


def test_float_labels_as_in_the_rpn():
    labels = torch.tensor([1.0, 0.0, -1.0, 0.0, 1.0, 0.0])
    pos, neg = BalancedSampler(4, 0.25)([labels])
    assert int(pos[0].sum()) == 1 and int(neg[0].sum()) == 3
    assert not (pos[0] | neg[0])[2]


@pytest.mark.parametrize("batch,fraction", [(256, 0.5), (512, 0.25), (16, 0.5)])
def test_same_seed_picks_what_torchvision_picks(batch, fraction):
    gen = torch.Generator().manual_seed(1)
    images = [make_labels(300, 2000, 100, gen), make_labels(5, 40, 3, gen),
              make_labels(0, 500, 0, gen), make_labels(400, 3, 0, gen),
              torch.zeros(0, dtype=torch.int64)]
    ours, ref = BalancedSampler(batch, fraction), BalancedPositiveNegativeSampler(batch, fraction)
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        pos, neg = ours(images)
        after_ours = torch.rand(3)  # the same number of draws were consumed
        torch.manual_seed(seed)
        ref_pos, ref_neg = ref(images)
        after_ref = torch.rand(3)
        for i in range(len(images)):
            assert torch.equal(pos[i], ref_pos[i].bool())
            assert torch.equal(neg[i], ref_neg[i].bool())
        assert torch.equal(after_ours, after_ref)
    torch.manual_seed(0)
    first = ours(images)[0][0]
    torch.manual_seed(1)
    assert not torch.equal(first, ours(images)[0][0])  # the seed matters
