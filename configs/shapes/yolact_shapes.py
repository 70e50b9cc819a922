"""A small YOLACT trained from scratch on the synthetic shapes dataset, on CPU, in minutes.

    python tools/train_net.py --config-file configs/shapes/yolact_shapes.py train.device=cpu

Loading this config generates the dataset (idempotent: only when $DETECTRON2_DATASETS/shapes does not
already hold it with these parameters) and registers shapes_train / shapes_val.

The model is configs/shapes/small_yolact.py (a narrow ResNet-18-style YOLACT, 128x128 input); the
schedule is short with a high learning rate.
"""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator

from yolact_d2.data import YolactDatasetMapper
from yolact_d2.data.shapes import prepare_shapes, shapes_default_root
from yolact_d2.data.augmentations import YolactResize
from yolact_d2.engine.schedule import yolact_lr_multiplier

from .small_yolact import INPUT_SIZE, NUM_CLASSES, model
from ..common.optim import SGD as optimizer
from ..common.train import train

# ------------------------------------------------------------------------------------- dataset
SHAPES = dict(num_train=1000, num_val=100, image_size=128, seed=0, max_objects=4)
prepare_shapes(shapes_default_root(), **SHAPES)

# ------------------------------------------------------------------------------------- data
dataloader = dict(
    train=dict(
        dataset=L(get_detection_dataset_dicts)(names="shapes_train", filter_empty=True),
        mapper=L(YolactDatasetMapper)(
            is_train=True,
            # Flip only: the full SSD augmentation (build_ssd_augmentation) slows convergence more
            # than a ~10-epoch schedule on 1000 images can afford.
            augmentations=[
                L(T.RandomFlip)(prob=0.5, horizontal=True, vertical=False),
                L(YolactResize)(size=INPUT_SIZE),
            ],
            image_format="BGR",
            mask_format="bitmask",
            num_classes=NUM_CLASSES,
        ),
        total_batch_size=8,
        num_workers=1,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
        mapper=L(YolactDatasetMapper)(is_train=False, image_format="BGR", mask_format="bitmask"),
        num_workers=1,
    ),
    evaluator=L(COCOEvaluator)(dataset_name="shapes_val", tasks=("bbox", "segm"), use_fast_impl=False),
)

# ------------------------------------------------------------------------------------- schedule
optimizer.lr = 8e-3
lr_multiplier = L(yolact_lr_multiplier)(
    base_lr=None,  # = optimizer.lr
    max_iter=None,  # = train.max_iter
    steps=(1200, 1400),
    gamma=0.1,
    warmup_init=1e-4,
    warmup_until=100,
)
train.max_iter = 1500
train.device = "cpu"
train.output_dir = "./output/yolact_shapes"
train.checkpointer = dict(period=500, max_to_keep=2)
train.eval_period = 0  # evaluate once, at the end
train.log_period = 20
