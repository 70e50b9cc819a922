"""YolactEdge ResNet-34-FPN, 550x550, COCO (not an official config; YolactEdge users ask for it).

torchvision's resnet34 layout (BasicBlocks; C3-C5 of 128/256/512 channels) under the YolactEdge
two-phase FPN. No official YOLACT / YolactEdge weights exist for it: train it, starting from
torchvision's ImageNet resnet34 for the backbone."""
from ..common.data.coco import dataloader
from ..common.models.yolact_edge import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 34
train.output_dir = "./output/yolact_edge_R_34_FPN_550"
