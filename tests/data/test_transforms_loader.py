"""build_loader: batches of different sizes, order fixed by (seed, epoch), resume, shards,
and augmentation that is the same with and without worker processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.loader import EpochBatchSampler, build_loader, collate
from maskrcnn.data.transforms import RandomHorizontalFlip, sample_generator
from maskrcnn.structures import Targets

# pycocotools' decode trips numpy 2's __array__ copy deprecation on every call: not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


NUM_IMAGES = 10


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    """10 images of two sizes, each with one box/polygon annotation."""
    root = tmp_path_factory.mktemp("loader")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(NUM_IMAGES):
        height, width = (20, 30) if i % 2 else (26, 18)
        name = f"im{i}.png"
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / name)
        images.append({"id": 100 + i, "file_name": name, "height": height, "width": width})
        x, y = 1 + i % 4, 2
        anns.append({"id": i + 1, "image_id": 100 + i, "category_id": 1, "iscrowd": 0,
                     "bbox": [x, y, 6, 5],
                     "segmentation": [[x, y, x + 6, y, x + 6, y + 5, x, y + 5]]})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    (root / "train.json").write_text(json.dumps(data))
    return root / "train.json", root / "images"


@pytest.fixture
def dataset(coco_files):
    return CocoDataset(*coco_files, transforms=RandomHorizontalFlip(0.5))


def _ids(loader):
    return [[m["image_id"] for m in metas] for _, _, metas in loader]


def test_collate_keeps_lists():
    sample = (torch.zeros(3, 4, 5), Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)),
              {"image_id": 1})
    images, targets, metas = collate([sample, sample])
    assert len(images) == len(targets) == len(metas) == 2 and metas[1]["image_id"] == 1


def test_batches_of_different_sizes(dataset):
    loader = build_loader(dataset, batch_size=4, shuffle=False, num_workers=0, seed=0)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [4, 4, 2] and len(loader) == 3
    images, targets, metas = batches[0]
    assert {tuple(im.shape) for im in images} == {(3, 20, 30), (3, 26, 18)}
    for image, target, meta in zip(images, targets, metas):
        assert isinstance(target, Targets) and target.masks.shape[1:] == image.shape[1:]
        assert meta["orig_size"] == tuple(image.shape[1:])
    drop = build_loader(dataset, batch_size=4, shuffle=False, num_workers=0, seed=0,
                        drop_last=True)
    assert [len(b[0]) for b in drop] == [4, 4] and len(drop) == 2


def test_order_depends_on_seed_and_epoch_only(dataset):
    def order(seed, epoch):
        return _ids(build_loader(dataset, batch_size=3, shuffle=True, num_workers=0,
                                 seed=seed, epoch=epoch))

    first = order(1, 0)
    assert first == order(1, 0)
    assert sorted(sum(first, [])) == list(range(100, 100 + NUM_IMAGES))
    assert first != order(1, 1) and first != order(2, 0)
    loader = build_loader(dataset, batch_size=3, shuffle=True, num_workers=0, seed=1)
    loader.batch_sampler.set_epoch(1)
    assert _ids(loader) == order(1, 1)


def test_start_iter_skips_without_loading(dataset):
    full = build_loader(dataset, batch_size=3, shuffle=True, num_workers=0, seed=4, epoch=2)
    resumed = build_loader(dataset, batch_size=3, shuffle=True, num_workers=0, seed=4, epoch=2,
                           start_iter=2)
    assert len(resumed) == len(full) - 2
    full_batches, resumed_batches = list(full), list(resumed)
    assert _ids(resumed) == _ids(full)[2:]
    for (a_images, a_targets, _), (b_images, b_targets, _) in zip(full_batches[2:],
                                                                  resumed_batches):
        for a, b in zip(a_images, b_images):  # same augmentation after resuming
            torch.testing.assert_close(a, b)
        for a, b in zip(a_targets, b_targets):
            torch.testing.assert_close(a.boxes, b.boxes)

    calls = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return NUM_IMAGES

        def __getitem__(self, index):
            calls.append(index)
            return torch.zeros(3, 2, 2), None, {"index": index}

    skipped = build_loader(Counting(), batch_size=3, shuffle=False, num_workers=0, seed=0,
                           start_iter=3)
    batches = list(skipped)
    assert calls == [9]  # only the last batch was read
    assert [m["index"] for m in batches[0][2]] == [9]


def test_distributed_shards(dataset):
    shards = [
        sum(_ids(build_loader(dataset, batch_size=2, shuffle=True, num_workers=0, seed=3,
                              distributed=True, rank=r, world_size=3)), [])
        for r in range(3)
    ]
    assert [len(s) for s in shards] == [4, 4, 4]  # 10 padded to 12 by DistributedSampler
    assert set(sum(shards, [])) == set(range(100, 100 + NUM_IMAGES))
    single = EpochBatchSampler(dataset, batch_size=2, shuffle=True, seed=3, world_size=1)
    assert len(single.indices()) == NUM_IMAGES


def test_workers_give_the_same_augmentation(dataset):
    kwargs = dict(batch_size=3, shuffle=True, seed=11, epoch=1)
    in_process = list(build_loader(dataset, num_workers=0, **kwargs))
    workers = list(build_loader(dataset, num_workers=2, **kwargs))
    flips = 0
    for (a_images, a_targets, a_metas), (b_images, b_targets, _) in zip(in_process, workers):
        for a, b, ta, tb, meta in zip(a_images, b_images, a_targets, b_targets, a_metas):
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(ta.boxes, tb.boxes)
            torch.testing.assert_close(ta.masks, tb.masks)
            index = dataset.image_ids.index(meta["image_id"])
            expected, _, _ = dataset.get(index, rng=sample_generator(11, 1, index))
            torch.testing.assert_close(a, expected)
            flips += int(not torch.equal(a, _unflipped(dataset, index)))
    assert 0 < flips < NUM_IMAGES  # p=0.5: some flipped, some not


def _unflipped(dataset, index):
    transforms, dataset.transforms = dataset.transforms, None
    try:
        return dataset[index][0]
    finally:
        dataset.transforms = transforms
