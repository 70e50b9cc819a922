"""A training data stream that is a pure function of (seed, position): resumable and worker-independent.

Detectron2's TrainingSampler restarts its shuffled stream from the beginning on every launch, and the
mapper's random augmentations follow the global RNG state: after `--resume` the data order and the
augmentations differ from an uninterrupted run. Here sample number `k` of the global stream (k counts
images over all iterations and all workers) is always the same image with the same augmentation:
its index comes from a per-epoch permutation seeded by (seed, epoch) and its augmentation RNG is
seeded by (seed, k). Resuming at iteration `i` starts the stream at `k = i * total_batch_size`;
worker `r` of `W` takes positions r, r+W, ... so the W per-worker batches together are exactly the
one-process batch.
"""
import logging
import random
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.utils.data as torchdata

from detectron2.data.build import trivial_batch_collator
from detectron2.utils import comm

__all__ = ["StreamDataset", "StreamSampler", "build_resumable_train_loader"]

logger = logging.getLogger(__name__)


def _seed_of(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


class StreamDataset(torchdata.Dataset):
    """Map-style dataset indexed by global stream position (an unbounded int)."""

    def __init__(self, dataset: List[dict], mapper: Optional[Callable], seed: int, shuffle: bool = True):
        if len(dataset) == 0:
            raise ValueError("The training dataset is empty: check the dataset name and its annotation file.")
        self.dataset = dataset
        self.mapper = mapper
        self.seed = int(seed)
        self.shuffle = shuffle
        self._perm_cache = {}

    def __len__(self):  # only used by DataLoader sanity checks; the stream itself is unbounded
        return 2**62

    def index_at(self, position: int) -> int:
        size = len(self.dataset)
        epoch, offset = divmod(position, size)
        if not self.shuffle:
            return offset
        perm = self._perm_cache.get(epoch)
        if perm is None:
            g = torch.Generator().manual_seed(_seed_of(self.seed, epoch))
            perm = torch.randperm(size, generator=g).tolist()
            self._perm_cache = {epoch: perm}  # one epoch at a time is enough for a forward stream
        return perm[offset]

    def _map(self, dataset_dict: dict, seed: int):
        """Run the mapper with all global RNGs seeded by `seed`, restoring them afterwards."""
        if self.mapper is None:
            return dataset_dict
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            np.random.seed(seed % 2**32)
            random.seed(seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.mapper(dataset_dict)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)

    def __getitem__(self, position: int):
        index = self.index_at(position)
        for attempt in range(100):
            out = self._map(self.dataset[index], _seed_of(self.seed, position, attempt))
            if out is not None:
                return out
            # The mapper rejected the image (e.g. no instance left after cropping): like Detectron2's
            # MapDataset (and the official loader), take another image, here chosen deterministically.
            if attempt == 10:
                logger.warning(f"The mapper rejected {attempt} images in a row at stream position {position}.")
            index = random.Random(_seed_of(self.seed, position, attempt, 7)).randrange(len(self.dataset))
        raise RuntimeError(f"The mapper rejected 100 images in a row at stream position {position}.")


class StreamSampler(torchdata.Sampler):
    """Positions start + rank, start + rank + world, ... (unbounded)."""

    def __init__(self, start: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None):
        self.start = int(start)
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size

    def __iter__(self):
        position = self.start + self.rank
        while True:
            yield position
            position += self.world_size


def build_resumable_train_loader(
    dataset: List[dict],
    mapper: Optional[Callable],
    total_batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    start_iter: int = 0,
    shuffle: bool = True,
):
    """Batches (lists of mapped dicts) for this worker, starting at iteration `start_iter`."""
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"dataloader.train.total_batch_size={total_batch_size} must be a positive multiple of the "
            f"number of processes ({world_size})."
        )
    batch_size = total_batch_size // world_size
    stream = StreamDataset(dataset, mapper, seed, shuffle)
    sampler = StreamSampler(start=start_iter * total_batch_size)
    batch_sampler = torchdata.BatchSampler(sampler, batch_size, drop_last=True)
    return torchdata.DataLoader(
        stream,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        persistent_workers=num_workers > 0,
    )
