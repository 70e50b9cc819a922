"""YolactEdge ResNet-18-FPN, 550x550, COCO (not an official config; YolactEdge users ask for it).

torchvision's resnet18 layout (BasicBlocks; C3-C5 of 128/256/512 channels) under the YolactEdge
two-phase FPN. No official YOLACT / YolactEdge weights exist for it: train it, starting from
torchvision's ImageNet resnet18 for the backbone."""
from ..common.data.coco import dataloader
from ..common.models.yolact_edge import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 18
train.output_dir = "./output/yolact_edge_R_18_FPN_550"
