"""Fine-tune YOLACT R50-FPN-550 on your own COCO-format dataset (hundreds to a few thousand images).

    python tools/convert_yolact_weights.py yolact_resnet50_54_800000.pth yolact_R_50_FPN_550.pth
    python tools/train_net.py --config-file configs/custom/yolact_R_50_FPN_finetune.py \
        train.init_checkpoint=yolact_R_50_FPN_550.pth

Data: $DETECTRON2_DATASETS/custom/annotations/instances_{train,val}.json with images in
$DETECTRON2_DATASETS/custom/{train,val}/ (or edit DATA_ROOT / the two register lines). The class
count is read from the train json's categories; the COCO checkpoint's class-dependent layers are
re-initialised for it (logged by name), everything else is loaded.

Recipe (why each number):
- lr = 1.25e-4 per image x dataloader.train.total_batch_size (the official 1e-3 at batch 8; linear
  scaling keeps it right when the batch is changed, e.g. total_batch_size=4 on a smaller GPU gives
  5e-4). Starting from COCO weights this is high enough; the shapes recipe (1e-3 per image, from
  scratch) is not a fine-tuning recipe: on a small set it kills the prototypes (segm AP 0).
- 500 warm-up iterations (official), 10k iterations, x0.1 at 75% and 92% of train.max_iter: the
  steps move with an override of train.max_iter (rule of thumb: 20-50 epochs, max_iter =
  epochs x images / total_batch_size).
- The training log warns if the learning rate still proves too high for the data: dead prototypes,
  a mask loss stuck at its start, an exploding loss; a NaN/inf stops training with the iteration and
  the tensor named, and --resume (with a lower optimizer.lr.lr_per_image) continues from the last
  good checkpoint.
"""
import os

from detectron2.config import LazyCall as L

from yolact_d2.data.datasets import read_coco_categories, register_coco_dataset
from yolact_d2.engine.schedule import linear_scaled_lr, yolact_lr_multiplier
from yolact_d2.modeling import set_num_classes

from ..yolact.yolact_R_50_FPN_550 import dataloader, model, optimizer, train

# ------------------------------------------------------------------------------------- data
DATA_ROOT = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "custom")
TRAIN_JSON = os.path.join(DATA_ROOT, "annotations", "instances_train.json")
dataloader.train.dataset.names = register_coco_dataset("custom_train", TRAIN_JSON, os.path.join(DATA_ROOT, "train"))
dataloader.test.dataset.names = register_coco_dataset(
    "custom_val", os.path.join(DATA_ROOT, "annotations", "instances_val.json"), os.path.join(DATA_ROOT, "val")
)
# Until the json exists the class count is unknown: 1 keeps the config loadable (to inspect it).
NUM_CLASSES = len(read_coco_categories(TRAIN_JSON)) if os.path.isfile(TRAIN_JSON) else 1
set_num_classes(model, NUM_CLASSES)
dataloader.train.mapper.num_classes = NUM_CLASSES
dataloader.train.total_batch_size = 8

# ------------------------------------------------------------------------------------- schedule
optimizer.lr = L(linear_scaled_lr)(lr_per_image=1.25e-4, total_batch_size="${dataloader.train.total_batch_size}")
lr_multiplier = L(yolact_lr_multiplier)(
    base_lr=None,  # = optimizer.lr
    max_iter=None,  # = train.max_iter
    steps=(0.75, 0.92),
    gamma=0.1,
    warmup_init=1e-4,
    warmup_until=500,
)
train.max_iter = 10000
train.checkpointer = dict(period=1000, max_to_keep=3)
train.eval_period = 2000
train.output_dir = "./output/yolact_R_50_FPN_finetune"
