"""COCO 2017 instance segmentation dataloaders for YOLACT (LazyConfig piece).

Expects Detectron2's builtin layout under $DETECTRON2_DATASETS (default ./datasets):
coco/annotations/instances_{train,val}2017.json and coco/{train,val}2017/ (see datasets/README.md).
Training: the official SSD augmentation, 550x550 squash, batch 8 (official yolact_base).
Test: images at original size; the model resizes them itself.

A custom COCO-format dataset: one line per split in your experiment config, e.g.
    dataloader.train.dataset.names = register_coco_dataset("my_train", "ann/train.json", "img/train")
    dataloader.test.dataset.names = register_coco_dataset("my_val", "ann/val.json", "img/val")
and set dataloader.train.mapper.num_classes (and the model's class count) to its category count.
"""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from yolact_d2.data import YolactDatasetMapper, build_ssd_augmentation
from yolact_d2.data.datasets import register_coco_dataset  # noqa: F401 (for the one-line recipe)
from yolact_d2.data.loaders import build_yolact_train_loader

dataloader = OmegaConf.create()

# Detectron2's train loader, without its None-retry that breaks on Python >= 3.11 (the mapper skips
# images left without instances); tools/train_net.py uses only dataset / mapper / batch / workers.
dataloader.train = L(build_yolact_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=True),
    mapper=L(YolactDatasetMapper)(
        is_train=True,
        augmentations=L(build_ssd_augmentation)(size=550, preserve_aspect_ratio=False),
        image_format="BGR",
        # COCO crowd annotations are RLE: Detectron2's "polygon" format cannot hold them.
        mask_format="bitmask",
        num_classes=80,
    ),
    total_batch_size=8,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(YolactDatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=4,
)

# use_fast_impl=True needs Detectron2's compiled _C, which our python-only build lacks.
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", tasks=("bbox", "segm"), use_fast_impl=False
)
