"""YolactEdge ResNet-18 video model, 550x550, YouTube-VIS 40 classes (not an official config).

yolact_edge_R_18_FPN_550 plus the flow net and SPA of the official ResNet video models; the
partial backbone stops at res3 (stride 8, 128 channels). No official weights exist: train it
(video training is another issue) or start from yolact_edge_R_18_FPN_550 (the flow net and SPA
then start from scratch). The dataloader is a COCO placeholder until video data lands."""
from ..common.models.yolact_edge import make_video_model
from .yolact_edge_R_18_FPN_550 import dataloader, lr_multiplier, model, optimizer, train

make_video_model(model)
train.output_dir = "./output/yolact_edge_vid_R_18_FPN_550"
