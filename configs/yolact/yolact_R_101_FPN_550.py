"""YOLACT ResNet-101-FPN, 550x550 (official yolact_base: 29.8 mask AP on COCO test-dev).

Official weights: yolact_base_54_800000.pth (convert with tools/convert_yolact_weights.py).
Training from ImageNet as official: convert torchvision's resnet101_reducedfc.pth with
`tools/convert_yolact_weights.py resnet101_reducedfc.pth init.pth --config <this file>`, then train.init_checkpoint=init.pth.
"""
from ..common.data.coco import dataloader
from ..common.models.yolact import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 101
train.output_dir = "./output/yolact_R_101_FPN_550"
