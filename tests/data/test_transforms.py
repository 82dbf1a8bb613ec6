"""Flips move image, boxes, masks and crowd boxes together; randomness follows the seed."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    RandomVerticalFlip,
    sample_generator,
    sample_seed,
)
from maskrcnn.structures import Targets


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[G, H, W] binary -> [G, 4] pixel-edge extents x1, y1, x2 + 1, y2 + 1 (test's own)."""
    boxes = []
    for mask in masks.bool():
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32)


def _sample(height=11, width=17):
    """Image with 3 rectangles (one at the border), boxes equal to their masks' extents."""
    masks = torch.zeros(3, height, width, dtype=torch.uint8)
    masks[0, 1:4, 2:9] = 1
    masks[1, 5:11, 0:3] = 1
    masks[2, 2:7, 12:17] = 1
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    targets = Targets(_mask_boxes(masks), torch.tensor([1, 2, 3]), masks)
    meta = {"image_id": 4, "crowd_boxes": torch.tensor([[0.0, 0.5, 4.0, 6.0]])}
    return image, targets, meta


@pytest.mark.parametrize("flip_cls,axis", [(RandomHorizontalFlip, 2), (RandomVerticalFlip, 1)])
def test_flip_moves_everything_together(flip_cls, axis):
    image, targets, meta = _sample()
    flip = flip_cls(p=1.0)
    out_image, out_targets, out_meta = flip(image, targets, meta, sample_generator(0, 0, 0))
    torch.testing.assert_close(out_image, image.flip(axis))
    torch.testing.assert_close(out_targets.masks, targets.masks.flip(axis))
    torch.testing.assert_close(out_targets.boxes, _mask_boxes(out_targets.masks))
    torch.testing.assert_close(out_targets.labels, targets.labels)
    height, width = image.shape[1:]
    crowd = out_meta["crowd_boxes"]
    expected = (torch.tensor([[width - 4.0, 0.5, width - 0.0, 6.0]]) if axis == 2
                else torch.tensor([[0.0, height - 6.0, 4.0, height - 0.5]]))
    torch.testing.assert_close(crowd, expected)
    assert meta["crowd_boxes"] is not crowd  # the input meta is left alone
    twice = flip_cls(p=1.0)(out_image, out_targets, out_meta, sample_generator(0, 0, 0))
    torch.testing.assert_close(twice[1].boxes, targets.boxes)


def test_flip_without_masks_and_empty_targets():
    image = torch.rand(3, 5, 8)
    empty = Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), None)
    _, out, _ = RandomHorizontalFlip(p=1.0)(image, empty, {}, sample_generator(0, 0, 0))
    assert out.boxes.shape == (0, 4) and out.masks is None


def test_flip_probability_and_determinism():
    flip = RandomHorizontalFlip(p=0.5)
    image, targets, meta = _sample()

    def flipped(seed_index):
        out = flip(image, targets, meta, sample_generator(7, 1, seed_index))[0]
        return not torch.equal(out, image)

    decisions = [flipped(i) for i in range(400)]
    assert decisions == [flipped(i) for i in range(400)]  # same seeds, same decisions
    assert 150 < sum(decisions) < 250
    never = RandomHorizontalFlip(p=0.0)
    assert all(never(image, targets, meta, sample_generator(0, 0, i))[0] is image
               for i in range(20))
    with pytest.raises(ValueError, match="probability"):
        RandomHorizontalFlip(p=1.5)


def test_compose_draws_from_one_stream():
    image, targets, meta = _sample()
    both = Compose([RandomHorizontalFlip(0.5), RandomVerticalFlip(0.5)])
    seen = set()
    for index in range(40):
        rng = sample_generator(3, 0, index)
        out = both(image, targets, meta, rng)[0]
        gen = sample_generator(3, 0, index)
        h_flip = torch.rand((), generator=gen).item() < 0.5
        v_flip = torch.rand((), generator=gen).item() < 0.5
        expected = image.flip(2) if h_flip else image
        expected = expected.flip(1) if v_flip else expected
        torch.testing.assert_close(out, expected)
        seen.add((h_flip, v_flip))
    assert len(seen) == 4
    assert "RandomVerticalFlip(p=0.5)" in repr(both)


def test_sample_seed_depends_on_all_three():
    base = sample_seed(0, 0, 0)
    assert base == sample_seed(0, 0, 0) and 0 <= base < 2**63
    others = {sample_seed(1, 0, 0), sample_seed(0, 1, 0), sample_seed(0, 0, 1), base}
    assert len(others) == 4
    assert sample_seed(0, 1, 0) != sample_seed(1, 0, 0)  # not seed + epoch
    a = torch.rand(4, generator=sample_generator(5, 2, 9))
    torch.testing.assert_close(a, torch.rand(4, generator=sample_generator(5, 2, 9)))
