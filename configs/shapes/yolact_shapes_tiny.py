"""A tiny shapes run for tests and smoke checks: 64x64 images, a 4-channel-wide model, 20 iterations.

    python tools/train_net.py --config-file configs/shapes/yolact_shapes_tiny.py

Loading this config registers shapes_tiny_train / shapes_tiny_val: 16 train / 4 val images,
generated (idempotently) when first read, under $DETECTRON2_DATASETS/shapes_tiny (else
~/.cache/yolact_d2/datasets/shapes_tiny).
"""
import os

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator

from yolact_d2.data import YolactDatasetMapper
from yolact_d2.data.augmentations import YolactResize
from yolact_d2.data.shapes import prepare_shapes, shapes_default_root
from yolact_d2.engine.schedule import linear_scaled_lr, yolact_lr_multiplier
from yolact_d2.modeling import set_head_width

from .small_yolact import NUM_CLASSES, model
from ..common.optim import SGD as optimizer
from ..common.train import train

ROOT = os.path.join(os.path.dirname(shapes_default_root()), "shapes_tiny")
prepare_shapes(ROOT, prefix="shapes_tiny", num_train=16, num_val=4, image_size=64, seed=0, max_objects=3)

INPUT_SIZE = 64
WIDTH = 4
model.backbone.bottom_up.stem.out_channels = WIDTH
for i, stage in enumerate(model.backbone.bottom_up.stages):
    stage.in_channels = WIDTH * (2 ** max(i - 1, 0))
    stage.out_channels = WIDTH * (2**i)
set_head_width(model, channels=16, num_prototypes=8)
model.input_size = INPUT_SIZE
model.prior_generator.scales = [[s, s * 2**0.5] for s in (8, 16, 32, 64, 128)]

dataloader = dict(
    train=dict(
        dataset=L(get_detection_dataset_dicts)(names="shapes_tiny_train", filter_empty=True),
        mapper=L(YolactDatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.RandomFlip)(prob=0.5, horizontal=True, vertical=False),
                L(YolactResize)(size=INPUT_SIZE),
            ],
            image_format="BGR",
            mask_format="bitmask",
            num_classes=NUM_CLASSES,
        ),
        total_batch_size=4,
        num_workers=0,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_tiny_val", filter_empty=False),
        mapper=L(YolactDatasetMapper)(is_train=False, image_format="BGR", mask_format="bitmask"),
        num_workers=0,
    ),
    evaluator=L(COCOEvaluator)(dataset_name="shapes_tiny_val", tasks=("bbox", "segm"), use_fast_impl=False),
)

# 1.25e-3 per image x batch 4 = 5e-3; the step at 3/4 of train.max_iter (15 of 20).
optimizer.lr = L(linear_scaled_lr)(lr_per_image=1.25e-3, total_batch_size="${dataloader.train.total_batch_size}")
lr_multiplier = L(yolact_lr_multiplier)(
    base_lr=None, max_iter=None, steps=(3 / 4,), gamma=0.1, warmup_init=1e-4, warmup_until=5
)
train.max_iter = 20
train.from_scratch_ok = True  # a small model trained from random weights on purpose
train.device = "cpu"
train.num_threads = 1
train.output_dir = "./output/yolact_shapes_tiny"
train.checkpointer = dict(period=10, max_to_keep=3)
train.eval_period = 0
train.log_period = 5
