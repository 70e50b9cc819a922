"""The training loader of the LazyConfig dataloader pieces: Detectron2's, minus its retry.

Why not build_detection_train_loader as is: on a map-style dataset it wraps the mapper in
MapDataset, whose fallback for a mapper that returns None (YolactDatasetMapper does when no
instance survives augmentation) calls random.sample() on a set, a TypeError on Python >= 3.11
(stock Detectron2 v0.6 and main; only our wheel build patches it). Given an iterable dataset,
Detectron2 skips None results instead: so we turn the dataset into the same sampler-driven stream
its loader builds (ToIterableDataset over a TrainingSampler) before handing it over. A rejected
image is then replaced by the next one of the shuffled stream rather than by a random one.
"""
import torch.utils.data as torchdata

__all__ = ["build_yolact_train_loader"]


def build_yolact_train_loader(dataset, *, mapper, sampler=None, total_batch_size, **kwargs):
    """build_detection_train_loader's arguments and result (batches: lists of mapped dicts); the
    mapper may return None to skip an image, on any Detectron2 and Python version."""
    from detectron2.data import build_detection_train_loader
    from detectron2.data.common import DatasetFromList, ToIterableDataset
    from detectron2.data.samplers import TrainingSampler

    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if not isinstance(dataset, torchdata.IterableDataset):
        dataset = ToIterableDataset(dataset, sampler if sampler is not None else TrainingSampler(len(dataset)))
    return build_detection_train_loader(dataset, mapper=mapper, sampler=None, total_batch_size=total_batch_size,
                                        **kwargs)
