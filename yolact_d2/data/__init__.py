"""Data: SSD augmentation as Detectron2 Augmentations, the YOLACT dataset mapper, the synthetic
shapes image set and moving-shapes video set, COCO-format dataset registration, video data (.flo,
FlyingChairs, YouTube-VIS, the frame-pair mapper), the train loader and the pre-training checks."""
from .augmentations import (
    YOLACT_MEAN_BGR,
    InstanceAugInput,
    RandomExpand,
    RandomPhotometricDistort,
    RandomSampleCrop,
    YolactResize,
    build_ssd_augmentation,
)
from .checks import DatasetCheckError, check_datasets
from .datasets import check_coco_json, register_coco_dataset
from .loaders import build_yolact_train_loader
from .mapper import AnnotationError, ImageReadError, YolactDatasetMapper
from .shapes import generate_shapes_dataset, prepare_shapes, register_shapes
from .moving_shapes import MovingShapesFlow, generate_moving_shapes_dataset, prepare_moving_shapes
from .video import (
    FloFileError,
    VideoPairMapper,
    load_ytvis_json,
    read_flo,
    register_flying_chairs,
    register_ytvis_instances,
    write_flo,
)

__all__ = [
    "YOLACT_MEAN_BGR",
    "InstanceAugInput",
    "RandomExpand",
    "RandomPhotometricDistort",
    "RandomSampleCrop",
    "YolactResize",
    "build_ssd_augmentation",
    "DatasetCheckError",
    "check_datasets",
    "check_coco_json",
    "register_coco_dataset",
    "build_yolact_train_loader",
    "AnnotationError",
    "ImageReadError",
    "YolactDatasetMapper",
    "generate_shapes_dataset",
    "prepare_shapes",
    "register_shapes",
    "MovingShapesFlow",
    "generate_moving_shapes_dataset",
    "prepare_moving_shapes",
    "FloFileError",
    "VideoPairMapper",
    "load_ytvis_json",
    "read_flo",
    "register_flying_chairs",
    "register_ytvis_instances",
    "write_flo",
]
