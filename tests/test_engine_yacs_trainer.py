"""YolactDefaultTrainer: Detectron2's DefaultTrainer with YOLACT's mapper and evaluator (yacs).

Oracles: the official training pipeline's contract (SSD augmentation ending in a squash to the
network size, crowd boxes kept) and Detectron2's train/test/evaluate loop producing COCO bbox and
segm results through YolactCOCOEvaluator.
"""
import math
import os

import pytest
import torch

from detectron2.structures import BitMasks

from yolact_d2.engine.yacs_trainer import YolactDefaultTrainer
from yolact_d2.evaluation import YolactCOCOEvaluator
from yacs_fixtures import tiny_shapes_cfg


@pytest.mark.slow
def test_trains_with_the_yolact_mapper_and_evaluates(tmp_path):
    prefix = "shapes_yacs_trainer"
    cfg = tiny_shapes_cfg(tmp_path, prefix, opts=["DATASETS.TEST", (f"{prefix}_val",), "SOLVER.MAX_ITER", 3])

    batch = next(iter(YolactDefaultTrainer.build_train_loader(cfg)))
    assert len(batch) == cfg.SOLVER.IMS_PER_BATCH
    for d in batch:
        assert tuple(d["image"].shape) == (3, 64, 64)  # squashed to MODEL.YOLACT.INPUT_SIZE
        assert d["crowd_boxes"].shape[-1] == 4  # kept for prior matching (DatasetMapper drops them)
        assert isinstance(d["instances"].gt_masks, BitMasks)
        assert tuple(d["instances"].gt_masks.tensor.shape[-2:]) == (64, 64)
    assert isinstance(YolactDefaultTrainer.build_evaluator(cfg, f"{prefix}_val"), YolactCOCOEvaluator)

    torch.manual_seed(0)
    trainer = YolactDefaultTrainer(cfg)
    trainer.train()  # DefaultTrainer's EvalHook evaluates DATASETS.TEST after the last iteration
    assert math.isfinite(trainer.storage.history("total_loss").latest())
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "inference", f"{prefix}_val", "coco_instances_results.json"))
    results = YolactDefaultTrainer.test(cfg, trainer.model)  # one test set: its results directly
    assert {"bbox", "segm"} <= set(results)
    assert all(0.0 <= results[t]["AP"] <= 100.0 for t in ("bbox", "segm"))
