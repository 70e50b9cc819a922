"""YolactEdge video fine-tuning on the moving-shapes set, on the CPU in minutes (official
yolact_edge_vid: its flow settings, a short schedule).

    python tools/train_net.py --config-file configs/yolact_edge/moving_shapes/video_finetune.py

Starts from the flow pre-training's final model (configs/yolact_edge/moving_shapes/flow_pretrain.py;
every key must load). Backbone and FPN phase 1 frozen; per iteration a reference frame 2-5 frames
earlier runs as a keyframe without gradients, the annotated frame runs fully (the feature-matching
targets and, official base_backward, its own YOLACT losses: `loss_*_full`), and the annotated frame is
warped from the reference: YOLACT losses (`loss_box`, `loss_cls`, `loss_mask`, `loss_semseg`) plus
`loss_feature_match` (cosine, P4/P5, "L+P"). Ends with the 5-phase VideoEvaluator on the val clips:
AP tables for all frames, keyframes and each warp distance 1-4.
"""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from ...common.data.moving_shapes import dataloader
from ...common.optim import SGD as optimizer
from ...common.train import train
from .small_yolact_edge import model

model.training_stage = "video"

# Official: SGD lr 2e-4 (batch 8), cosine to 0 over 200k iterations, no warm-up. A few hundred here.
optimizer.lr = 1e-3
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=0.05,
    warmup_factor=0.1,
)
train.max_iter = 300
train.init_checkpoint = "./output/yolact_edge_moving_shapes/flow_pretrain/model_final.pth"
train.init_may_miss = []  # the flow stage's model has every part
train.device = "cpu"
train.num_threads = 1  # + 1 data-loading worker
# The finest flow prediction and the video losses' unused branches get no gradient.
train.ddp.find_unused_parameters = True
train.output_dir = "./output/yolact_edge_moving_shapes/video_finetune"
train.checkpointer = dict(period=100, max_to_keep=2)
train.eval_period = 0  # once, at the end
train.log_period = 20
