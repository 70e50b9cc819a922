"""A small YOLACT trained from scratch on the synthetic shapes dataset, on CPU, in minutes.

    python tools/train_net.py --config-file configs/shapes/yolact_shapes.py train.device=cpu

Loading this config only registers shapes_train / shapes_val (configs/common/data/shapes.py); the
set is generated when first read, under $DETECTRON2_DATASETS/shapes (else
~/.cache/yolact_d2/datasets/shapes), unless it is already there with the same parameters.

The model is configs/shapes/small_yolact.py (a narrow ResNet-18-style YOLACT, 128x128 input); the
schedule is short with a high learning rate.
"""
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from yolact_d2.data.augmentations import YolactResize
from yolact_d2.engine.schedule import linear_scaled_lr, yolact_lr_multiplier

from ..common.data.shapes import dataloader  # registers shapes_train / shapes_val
from ..common.optim import SGD as optimizer
from ..common.train import train
from .small_yolact import INPUT_SIZE, NUM_CLASSES, model

# ------------------------------------------------------------------------------------- data
# Flip only: the full SSD augmentation (build_ssd_augmentation) slows convergence more than a
# ~10-epoch schedule on 1000 images can afford.
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(prob=0.5, horizontal=True, vertical=False),
    L(YolactResize)(size=INPUT_SIZE),
]
dataloader.train.mapper.num_classes = NUM_CLASSES
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1

# ------------------------------------------------------------------------------------- schedule
# lr = 1e-3 per image x batch 8 = 8e-3; steps at 3/4 and 11/12 of train.max_iter (900, 1100 of 1200).
# Both follow overrides of dataloader.train.total_batch_size and train.max_iter.
optimizer.lr = L(linear_scaled_lr)(lr_per_image=1e-3, total_batch_size="${dataloader.train.total_batch_size}")
lr_multiplier = L(yolact_lr_multiplier)(
    base_lr=None,  # = optimizer.lr
    max_iter=None,  # = train.max_iter
    steps=(3 / 4, 11 / 12),
    gamma=0.1,
    warmup_init=1e-4,
    warmup_until=100,
)
# Measured segm AP on shapes_val: 48.4 with 1000 iterations (steps 700/900), 61.8 with 1500
# (steps 1200/1400); ~0.17 CPU-s an iteration on one core (+ one data worker).
train.max_iter = 1200
train.from_scratch_ok = True  # a small model trained from random weights on purpose
train.device = "cpu"
train.num_threads = 1  # + 1 data-loading worker: the two cores of a small CPU machine
train.output_dir = "./output/yolact_shapes"
train.checkpointer = dict(period=500, max_to_keep=2)
train.eval_period = 0  # evaluate once, at the end
train.log_period = 20
