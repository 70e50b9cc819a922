"""YOLACT ResNet-101-FPN at 400x400 (official yolact_im400): prior scales scaled by 400/550.

Official weights: yolact_im400_54_800000.pth (same keys as yolact_base; convert with
tools/convert_yolact_weights.py ... --config configs/yolact/yolact_R_101_FPN_400.py).
"""
from ..common.data.coco import dataloader
from ..common.models.yolact import model, scaled_official_scales
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 101
model.input_size = 400
model.prior_generator.scales = scaled_official_scales(400)  # [[17], [34], [69], [139], [279]]
dataloader.train.mapper.augmentations.size = 400
train.output_dir = "./output/yolact_R_101_FPN_400"
