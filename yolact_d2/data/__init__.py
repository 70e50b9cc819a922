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
from .mapper import AnnotationError, ImageReadError, YolactDatasetMapper
from .shapes import generate_shapes_dataset, prepare_shapes, register_shapes

__all__ = [k for k in globals().keys() if not k.startswith("_")]
