"""YOLACT ResNet-50-FPN, 550x550 (official yolact_resnet50: 28.2 mask AP on COCO test-dev).

Official weights: yolact_resnet50_54_800000.pth (convert with tools/convert_yolact_weights.py).
Training from ImageNet as official: convert torchvision's resnet50-19c8e357.pth with
`tools/convert_yolact_weights.py resnet50-19c8e357.pth init.pth --config <this file>`, then train.init_checkpoint=init.pth.
"""
from ..common.data.coco import dataloader
from ..common.models.yolact import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 50
train.output_dir = "./output/yolact_R_50_FPN_550"
