"""video_finetune.py without flow pre-training (beyond official): the flow net starts from random
weights and learns from the video losses alone (feature matching and the warped pass's YOLACT
losses, no ground-truth flow), from the main job's image model. Measures what flow pre-training buys.

    python tools/train_net.py --config-file configs/yolact_edge/moving_shapes/video_finetune_no_flow_pretrain.py
"""
from .small_yolact_edge import VIDEO_PARTS
from .video_finetune import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = "./output/yolact_shapes/model_final.pth"
train.init_may_miss = VIDEO_PARTS  # only the flow net and SPA start fresh
train.output_dir = "./output/yolact_edge_moving_shapes/video_finetune_no_flow_pretrain"
