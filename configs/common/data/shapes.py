"""Synthetic shapes dataloaders (LazyConfig piece): the same loaders, mapper and COCOEvaluator as
COCO, on the synthetic set registered as shapes_train / shapes_val.

Loading this config writes nothing: the set is generated under shapes_default_root()
($DETECTRON2_DATASETS/shapes, else ~/.cache/yolact_d2/datasets/shapes) when a split is first read
(seconds; skipped when the folder already holds it with the same parameters). Class names are in
MetadataCatalog right away.

To change the data, set SHAPES in your experiment config and call prepare_shapes again, e.g.
    prepare_shapes(shapes_default_root(), **dict(SHAPES, num_train=2000))
"""
from yolact_d2.data.shapes import DEFAULT_KINDS, prepare_shapes, shapes_default_root

from .coco import dataloader  # the same loaders, mapper and evaluator, on other datasets

SHAPES = dict(num_train=1000, num_val=100, image_size=128, seed=0)
NUM_CLASSES = len(DEFAULT_KINDS)  # circle, rectangle, triangle, star
prepare_shapes(shapes_default_root(), **SHAPES)  # registers; generates on first read

dataloader.train.dataset.names = "shapes_train"
# Experiments set the augmentation size to the model's input size (550 here, as COCO).
dataloader.train.mapper.num_classes = NUM_CLASSES  # bitmask format: the set has RLE masks and crowds
dataloader.train.num_workers = 2
dataloader.test.dataset.names = "shapes_val"
dataloader.test.num_workers = 1
