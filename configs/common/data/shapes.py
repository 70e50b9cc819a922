"""Synthetic shapes dataloaders (LazyConfig piece): the same loaders, mapper and COCOEvaluator as
COCO, on a dataset generated on first use under $DETECTRON2_DATASETS/shapes (seconds; skipped
when it already exists with the same parameters) and registered as shapes_train / shapes_val.

To change the data, set SHAPES in your experiment config and call prepare_shapes again, e.g.
    prepare_shapes(shapes_default_root(), **dict(SHAPES, num_train=2000))
"""
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from yolact_d2.data import YolactDatasetMapper, build_ssd_augmentation
from yolact_d2.data.shapes import DEFAULT_KINDS, prepare_shapes, shapes_default_root

SHAPES = dict(num_train=1000, num_val=100, image_size=128, seed=0)
NUM_CLASSES = len(DEFAULT_KINDS)  # circle, rectangle, triangle, star
prepare_shapes(shapes_default_root(), **SHAPES)

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_train", filter_empty=True),
    mapper=L(YolactDatasetMapper)(
        is_train=True,
        # Set size to the model's input size (e.g. a small one for CPU training).
        augmentations=L(build_ssd_augmentation)(size=550),
        image_format="BGR",
        mask_format="bitmask",  # the set has RLE masks and crowd regions
        num_classes=NUM_CLASSES,
    ),
    total_batch_size=8,
    num_workers=2,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(YolactDatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=1,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", tasks=("bbox", "segm"), use_fast_impl=False
)
