"""YolactEdge video fine-tuning on the moving-shapes set, on the CPU in minutes (official
yolact_edge_vid: its flow settings, a short schedule).

    python tools/train_net.py --config-file configs/yolact_edge/moving_shapes/video_finetune.py

Starts from the flow pre-training's final model (configs/yolact_edge/moving_shapes/flow_pretrain.py;
every key must load). Backbone and FPN phase 1 frozen; per iteration a reference frame 2-5 frames
earlier runs as a keyframe without gradients, the annotated frame runs fully (the feature-matching
targets and, official base_backward, its own YOLACT losses: `loss_*_full`), and the annotated frame is
warped from the reference: YOLACT losses (`loss_box`, `loss_cls`, `loss_mask`, `loss_semseg`) plus
`loss_feature_match` (cosine, P4/P5, "L+P", weighted x200: see below). Ends with the 5-phase VideoEvaluator on the val clips:
AP tables for all frames, keyframes and each warp distance 1-4.
"""
from detectron2.config import LazyCall as L

from yolact_d2.engine.schedule import cosine_lr_multiplier

from ...common.data.moving_shapes import dataloader
from ...common.optim import SGD as optimizer
from .flow_pretrain import train  # the same CPU settings (threads, checkpoints, logging, DDP)
from .small_yolact_edge import model

model.training_stage = "video"

# Official: SGD lr 2e-4 (batch 8), linear warm-up from 0 over 500 iterations, cosine to 0 over 200k. A few hundred here.
optimizer.lr = 1e-3
lr_multiplier = L(cosine_lr_multiplier)(max_iter=None, warmup_until=15, warmup_factor=0.1)
train.max_iter = 300
# Beyond official (fm_loss_alpha 1): feature matching x200. In a few hundred iterations the warped
# pass's YOLACT losses (~5, against ~0.07 of cosine distance) otherwise decide what SPA and the flow
# net learn, and the warped P4 stays as far from the recomputed one as the unwarped keyframe P4.
# Measured on the val clips (cosine warped / unwarped keyframe P4, P5; segm AP all frames):
# x1 0.9292 / 0.9293, 0.9397 / 0.9396, 57.1 (before SPA was added); with zero-init SPA: x20 0.9288,
# 0.9418, 56.9; x50 0.9319, 0.9424, 57.1; x100 0.9340, 0.9425, 57.2; x200 0.9359, 0.9425, 57.3 (the
# unwarped: 0.9293, 0.9396). Adam instead of SGD (lr 1e-4, or 1e-3 on flow net + SPA and 1e-5
# elsewhere) lost 4 points of AP and left the warped P4 farther (0.901, 0.857).
model.feature_match_weight = 200.0
train.init_checkpoint = "./output/yolact_edge_moving_shapes/flow_pretrain/model_final.pth"
train.init_may_miss = []  # the flow stage's model has every part
train.output_dir = "./output/yolact_edge_moving_shapes/video_finetune"
# Fine-tuning a trained image model: its mask loss starts low and stays flat, which the health
# check's "mask loss stuck" warning (meant for training from scratch) would flag; dead prototypes
# are still checked.
train.health = dict(period=20, dead_fraction=0.9, stuck_after=1.0)
