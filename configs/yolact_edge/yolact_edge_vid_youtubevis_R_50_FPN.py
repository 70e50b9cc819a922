"""YolactEdge R50 video fine-tuning on YouTube-VIS, the official recipe for GPUs
(yolact_edge_vid_resnet50: lr 2e-4 at batch 8, linear warm-up from 0 over 500 iterations then
cosine to 0, 200k iterations; backbone and FPN phase 1 frozen; reference frames 2-5 frames before
the annotated one from all frames; cosine feature matching "L+P", weight 1; base_backward; the SSD
augmentation without expand).

    python tools/train_net.py --config-file configs/yolact_edge/yolact_edge_vid_youtubevis_R_50_FPN.py --num-gpus 8

Data: $DETECTRON2_DATASETS/ytvis_2019 (datasets/README.md: train.v4.json / valid.v4.json and
train_all_frames/), registered when this config is loaded. Init: the flow pre-training's final
model (configs/yolact_edge/flow_flying_chairs_R_50_FPN.py); every key must load.
Not wired: the official joint COCO batches (`dataset.joint="coco"`); the model accepts them
(items without "reference_image" get the image losses, logged as `loss_*_image`), the data side
(COCO classes mapped to YouTube-VIS's) is not done.
"""
import os

from detectron2.config import LazyCall as L

from yolact_d2.data import build_ssd_augmentation
from yolact_d2.data.video import VideoPairMapper, register_ytvis_instances
from yolact_d2.engine.schedule import cosine_lr_multiplier
from yolact_d2.evaluation import VideoEvaluator

from .yolact_edge_vid_R_50_FPN_550 import dataloader, model, optimizer, train

_ROOT = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "ytvis_2019")
_FRAMES = os.path.join(_ROOT, "train_all_frames", "JPEGImages")
register_ytvis_instances("ytvis_2019_train_v4", os.path.join(_ROOT, "annotations", "train.v4.json"), _FRAMES,
                         all_frames_root=_FRAMES)
register_ytvis_instances("ytvis_2019_valid_v4", os.path.join(_ROOT, "annotations", "valid.v4.json"), _FRAMES,
                         all_frames_root=_FRAMES)

model.training_stage = "video"
# The COCO loaders of the base config (Detectron2's test loader, our train loader) on YouTube-VIS.
dataloader.train.dataset.names = "ytvis_2019_train_v4"
dataloader.train.mapper = L(VideoPairMapper)(
    is_train=True,
    augmentations=L(build_ssd_augmentation)(size=550, expand=False),  # official augment_expand=False
    image_format="BGR",
    mask_format="bitmask",
    num_classes=40,
    reference_gap=(2, 5),
)
dataloader.test.dataset.names = "ytvis_2019_valid_v4"
dataloader.evaluator = L(VideoEvaluator)(dataset_name="${..test.dataset.names}", keyframe_interval=5)
optimizer.lr = 2e-4
lr_multiplier = L(cosine_lr_multiplier)(max_iter=None, warmup_until=500, warmup_factor=0.0)  # official cosine
train.max_iter = 200000
train.init_checkpoint = "./output/flow_flying_chairs_R_50_FPN/model_final.pth"
train.init_may_miss = []
train.ddp.find_unused_parameters = True  # the finest flow prediction gets no gradient
train.output_dir = "./output/yolact_edge_vid_youtubevis_R_50_FPN"
