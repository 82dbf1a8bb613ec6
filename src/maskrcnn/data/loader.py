"""Batching: a DataLoader whose order and augmentation depend only on (seed, epoch).

The batch sampler yields keys (index, epoch, seed) instead of bare indices; a thin wrapper
turns each key into `dataset.get(index, rng=sample_generator(seed, epoch, index))`. So the
augmentation of a sample never depends on worker processes or on what was loaded before,
and a resumed run can skip the batches it has already seen without loading them.

Per epoch: `loader.batch_sampler.set_epoch(epoch)` (or build a new loader) before iterating.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from maskrcnn.data.transforms import sample_generator
from maskrcnn.structures import Targets

__all__ = ["EpochBatchSampler", "SeededDataset", "build_loader", "collate"]

SampleKey = tuple[int, int, int]  # (index, epoch, seed)


def collate(
    batch: Sequence[tuple[Tensor, Targets, dict[str, Any]]],
) -> tuple[list[Tensor], list[Targets], list[dict[str, Any]]]:
    """[(image, targets, meta), ...] -> (images, targets, metas): lists, no padding."""
    images = [sample[0] for sample in batch]
    targets = [sample[1] for sample in batch]
    metas = [sample[2] for sample in batch]
    return images, targets, metas


class SeededDataset(Dataset):
    """Reads items by key (index, epoch, seed), augmenting with a generator seeded from it.

    Datasets without a `get(index, rng)` method are read as `dataset[index]`.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        index, epoch, seed = key
        if hasattr(self.dataset, "get"):
            return self.dataset.get(index, rng=sample_generator(seed, epoch, index))
        return self.dataset[index]


class EpochBatchSampler(Sampler[list[SampleKey]]):
    """Batches of keys (index, epoch, seed) in an order fixed by (seed, epoch).

    The index order of one epoch comes from torch's DistributedSampler (one replica when
    not distributed), so each rank sees its own shard. `start_iter` skips that many batches
    at the start of the epoch by slicing the index list (nothing is loaded for them).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        start_iter: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.order = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = epoch
        self.start_iter = start_iter

    def set_epoch(self, epoch: int, start_iter: int = 0) -> None:
        """Use the order of `epoch`, skipping its first `start_iter` batches."""
        self.epoch = epoch
        self.start_iter = start_iter

    def indices(self) -> list[int]:
        """This rank's dataset indices for the epoch, before batching and skipping."""
        self.order.set_epoch(self.epoch)
        return list(self.order)

    def _batches(self) -> list[list[int]]:
        indices = self.indices()
        size = self.batch_size
        batches = [indices[i : i + size] for i in range(0, len(indices), size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        return batches[self.start_iter :]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for batch in self._batches():
            yield [(index, self.epoch, self.seed) for index in batch]

    def __len__(self) -> int:
        n = self.order.num_samples  # per rank, after DistributedSampler's padding
        full, rest = divmod(n, self.batch_size)
        total = full + (1 if rest and not self.drop_last else 0)
        return max(total - self.start_iter, 0)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    epoch: int = 0,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    start_iter: int = 0,
    persistent_workers: bool = False,
) -> DataLoader:
    """DataLoader yielding (images, targets, metas) lists; order and augmentation depend only
    on (seed, epoch, index). Not distributed: rank and world_size are ignored.

    Advance epochs with `loader.batch_sampler.set_epoch(epoch, start_iter=0)`.
    """
    if not distributed:
        rank, world_size = 0, 1
    sampler = EpochBatchSampler(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        start_iter=start_iter,
    )
    return DataLoader(
        SeededDataset(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=_ignore_interrupts if num_workers > 0 else None,
    )


def _ignore_interrupts(worker_id: int) -> None:
    """Workers leave Ctrl-C and SIGTERM to the main process (a terminal, `kill -- -PGID`,
    docker and batch schedulers signal the whole group), which finishes its step and saves
    a checkpoint; a worker dying on them would break that. Workers still end with the main
    process (torch's loader stops them, and they exit when their parent is gone)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
