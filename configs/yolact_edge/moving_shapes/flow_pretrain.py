"""YolactEdge flow pre-training on the moving-shapes set, on the CPU in about a minute (official
yolact_edge_vid_trainflow, whose data is FlyingChairs; here the set's exact flows).

    python tools/train_net.py --config-file configs/yolact_edge/moving_shapes/flow_pretrain.py

Starts from the main job's image model (output/yolact_shapes/model_final.pth: everything but the
flow net and SPA must load from it) and trains only FlowNetMini (its pre-conv included) on
(reference, target) pairs 2-5 frames apart: the official EPE at three scales on the two frames'
detached C3 laterals. Ends with FlowEPEEvaluator on the val pairs (mean EPE in pixels).

Measured: a few hundred iterations do not teach the flow net this set's flow. It ends at the zero
flow (val EPE 1.905 px, zero flow 1.860; on a larger-objects variant SGD 1e-2 x 600 and Adam 1e-3 x
600 too: 1.918 / 1.920 vs 1.912), its flow, scale and bias maps constant (mean |flow| 0.02 px,
|scale - 1| 0.004, |bias| 0.004), though it can fit one batch (loss 0.12 vs the zero flow's 0.74 in
300 steps): with 86% of the pixels static, the EPE's best guess without real matching is 0. Fine-tuned
from it or from a fresh flow net (video_finetune.py's zero-init SPA and x200 feature matching), the
models end within 0.001 cosine and 0.5 AP of each other (README, Video).
"""
from detectron2.config import LazyCall as L

from yolact_d2.engine.schedule import yolact_lr_multiplier

from ...common.data.moving_shapes import dataloader
from ...common.data.moving_shapes import flow_dataloader as _flow_eval
from ...common.optim import SGD as optimizer
from ...common.train import train
from .small_yolact_edge import VIDEO_PARTS, model

model.training_stage = "flow"
# What the stage is scored on: the flow's EPE on val frame pairs (not the video AP).
dataloader.test, dataloader.evaluator = _flow_eval.test, _flow_eval.evaluator

# Official: SGD lr 2e-4 (batch 8) for 400k iterations. A few hundred here: a higher rate, steps.
optimizer.lr = 2e-3
lr_multiplier = L(yolact_lr_multiplier)(
    base_lr=None, max_iter=None, steps=(0.75,), gamma=0.1, warmup_init=1e-4, warmup_until=20
)
train.max_iter = 300
train.init_checkpoint = "./output/yolact_shapes/model_final.pth"
train.init_may_miss = VIDEO_PARTS
train.device = "cpu"
train.num_threads = 1  # + 1 data-loading worker
# The flow net's scale/bias convs take no part in the flow loss (official too).
train.ddp.find_unused_parameters = True
train.output_dir = "./output/yolact_edge_moving_shapes/flow_pretrain"
train.checkpointer = dict(period=100, max_to_keep=2)
train.eval_period = 0  # once, at the end
train.log_period = 20
