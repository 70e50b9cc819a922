"""`YolactDefaultTrainer`: Detectron2's DefaultTrainer for yacs configs, with YOLACT's data and evaluator.

Plain `DefaultTrainer(cfg)` also trains a yacs-config Yolact (the model takes DatasetMapper's
output), but with Detectron2's data pipeline: ResizeShortestEdge + flip, crowd annotations dropped.
This subclass swaps in what the LazyConfig path uses: YolactDatasetMapper with the official SSD
augmentation at MODEL.YOLACT.INPUT_SIZE (crowd boxes kept for matching), and YolactCOCOEvaluator
(segm scored with YOLACT++'s mask_scores).
"""
import os

from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer

from yolact_d2.compat import train_loader_kwargs_from_yacs
from yolact_d2.data import YolactDatasetMapper, build_ssd_augmentation
from yolact_d2.data.loaders import build_yolact_train_loader as build_stream_train_loader
from yolact_d2.evaluation import YolactCOCOEvaluator

__all__ = ["YolactDefaultTrainer", "build_yolact_train_loader"]


def build_yolact_train_loader(cfg):
    """Detectron2's train loader (DATASETS.TRAIN, SOLVER.IMS_PER_BATCH, DATALOADER.*) with the
    official YOLACT mapper: SSD augmentation to MODEL.YOLACT.INPUT_SIZE (aspect kept in
    "shortest_edge" mode), INPUT.MASK_FORMAT masks, crowd boxes. Built by the LazyConfig path's
    loader, which skips images the mapper rejects without Detectron2's MapDataset retry (broken on
    Python >= 3.11 with stock Detectron2)."""
    y = cfg.MODEL.YOLACT
    mapper = YolactDatasetMapper(
        is_train=True,
        augmentations=build_ssd_augmentation(
            size=y.INPUT_SIZE, preserve_aspect_ratio=y.RESIZE_MODE == "shortest_edge"
        ),
        image_format=cfg.INPUT.FORMAT,
        mask_format=cfg.INPUT.MASK_FORMAT,
        num_classes=y.NUM_CLASSES,
    )
    return build_stream_train_loader(**train_loader_kwargs_from_yacs(cfg, mapper))


class YolactDefaultTrainer(DefaultTrainer):
    """DefaultTrainer with YOLACT's train loader, test loader (images at full size: the model
    resizes them) and evaluator."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_yolact_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = YolactDatasetMapper(is_train=False, augmentations=[], image_format=cfg.INPUT.FORMAT)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        # use_fast_impl=False: the fast COCOeval needs Detectron2's compiled _C.
        return YolactCOCOEvaluator(
            dataset_name,
            output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name),
            use_fast_impl=False,
        )
