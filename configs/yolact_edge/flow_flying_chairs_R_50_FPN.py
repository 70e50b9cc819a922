"""YolactEdge R50 flow pre-training on FlyingChairs, the official recipe for GPUs
(yolact_edge_vid_trainflow_resnet50: lr 2e-4 at batch 8, linear warm-up from 0 over 500
iterations then cosine to 0, 400k iterations, only FlowNetMini and its pre-conv trained).

    python tools/train_net.py --config-file configs/yolact_edge/flow_flying_chairs_R_50_FPN.py --num-gpus 8

Data: $DETECTRON2_DATASETS/FlyingChairs_release (datasets/README.md), registered when this config
is loaded (read when training starts). Pairs as official: img1 is the current frame, img2 the
keyframe, the .flo flow img1 -> img2 is the backward flow of our convention; both images squashed to
550x550, the flow rescaled with them (VideoPairMapper), no other augmentation.
Init: the COCO YolactEdge R50 image model (official yolact_edge_resnet50_54_800000.pth converted with
tools/convert_yolact_weights.py): everything but the flow net and SPA must load from it.
"""
import os

from detectron2.config import LazyCall as L
from detectron2.data import get_detection_dataset_dicts
from omegaconf import OmegaConf

from yolact_d2.data.augmentations import YolactResize
from yolact_d2.data.loaders import build_yolact_train_loader
from yolact_d2.data.video import VideoPairMapper, register_flying_chairs
from yolact_d2.engine.schedule import cosine_lr_multiplier

from .yolact_edge_vid_R_50_FPN_550 import model, optimizer, train

_ROOT = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "FlyingChairs_release")
register_flying_chairs("flying_chairs_train", _ROOT, split="train")

model.training_stage = "flow"
dataloader = OmegaConf.create()
dataloader.train = L(build_yolact_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="flying_chairs_train", filter_empty=False),
    mapper=L(VideoPairMapper)(is_train=True, augmentations=[L(YolactResize)(size=550)], image_format="BGR"),
    total_batch_size=8,
    num_workers=4,
)
optimizer.lr = 2e-4
lr_multiplier = L(cosine_lr_multiplier)(max_iter=None, warmup_until=500, warmup_factor=0.0)  # official cosine
train.max_iter = 400000
train.init_checkpoint = "./weights/yolact_edge_R_50_FPN_550_coco.pth"
train.init_may_miss = [r"^flow_net\.", r"^spa\.", r"(^|\.)cls_score\.", r"(^|\.)semantic_seg_conv\."]
train.ddp.find_unused_parameters = True  # the flow net's scale/bias convs take no part in the flow loss
train.eval_period = 0
train.output_dir = "./output/flow_flying_chairs_R_50_FPN"
