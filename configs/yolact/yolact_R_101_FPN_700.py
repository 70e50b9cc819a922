"""YOLACT ResNet-101-FPN at 700x700 (official yolact_im700): prior scales scaled by 700/550.

Official weights: yolact_im700_54_800000.pth (same keys as yolact_base; convert with
tools/convert_yolact_weights.py ... --config configs/yolact/yolact_R_101_FPN_700.py).
"""
from ..common.data.coco import dataloader
from ..common.models.yolact import model, scaled_official_scales
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 101
model.input_size = 700
model.prior_generator.scales = scaled_official_scales(700)  # [[30], [61], [122], [244], [488]]
model.criterion.masks_to_train = 300  # official yolact_im700
dataloader.train.mapper.augmentations.size = 700
train.output_dir = "./output/yolact_R_101_FPN_700"
