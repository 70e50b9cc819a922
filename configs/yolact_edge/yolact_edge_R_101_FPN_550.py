"""YolactEdge ResNet-101-FPN, 550x550, COCO (official yolact_edge).

Official weights: yolact_edge_54_800000.pth; convert with tools/convert_yolact_weights.py."""
from ..common.data.coco import dataloader
from ..common.models.yolact_edge import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 101
train.output_dir = "./output/yolact_edge_R_101_FPN_550"
