"""YolactEdge MobileNetV2 video model, 550x550, YouTube-VIS 40 classes (not an official config).

Official YolactEdge runs MobileNetV2 only on single images; here its partial backbone stops at
stage3 (stride 8, 32 channels) and the flow net / SPA are those of the ResNet video models. No
official weights exist: train it (video training is another issue) or start from the COCO
MobileNetV2 model (the flow net and SPA then start from scratch). The dataloader is a COCO
placeholder until video data lands."""
from ..common.data.coco import dataloader
from ..common.models.yolact_edge import model, make_video_model, use_mobilenet_v2
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

use_mobilenet_v2(model)
make_video_model(model)
train.output_dir = "./output/yolact_edge_vid_mobilenetv2_FPN_550"
