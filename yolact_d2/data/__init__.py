"""Data: SSD augmentation as Detectron2 Augmentations, the YOLACT dataset mapper, the synthetic
shapes dataset and COCO-format dataset registration."""
from .augmentations import (
    YOLACT_MEAN_BGR,
    InstanceAugInput,
    RandomExpand,
    RandomPhotometricDistort,
    RandomSampleCrop,
    YolactResize,
    build_ssd_augmentation,
)
from .datasets import check_coco_json, register_coco_dataset
from .mapper import AnnotationError, ImageReadError, YolactDatasetMapper
from .shapes import generate_shapes_dataset, prepare_shapes, register_shapes

__all__ = [
    "YOLACT_MEAN_BGR",
    "InstanceAugInput",
    "RandomExpand",
    "RandomPhotometricDistort",
    "RandomSampleCrop",
    "YolactResize",
    "build_ssd_augmentation",
    "check_coco_json",
    "register_coco_dataset",
    "AnnotationError",
    "ImageReadError",
    "YolactDatasetMapper",
    "generate_shapes_dataset",
    "prepare_shapes",
    "register_shapes",
]
