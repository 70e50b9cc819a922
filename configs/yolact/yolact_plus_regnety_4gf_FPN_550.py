"""YOLACT++ head on a non-ResNet Detectron2 backbone: RegNetY-4.0GF (DDS) FPN, 550x550.

The ++ parts that do not depend on the backbone: 9 priors per location (3 scales x 3 ratios,
57,744 at 550) and mask re-scoring (FastMaskIoUNet); the deformable convs are a ResNet-only
change and do not apply. The bottom-up network, its input normalisation and its ImageNet
weights are those of yolact_regnety_4gf_FPN_550.py (Detectron2's model-zoo RegNetY-4GF).
"""
from yolact_d2.evaluation import YolactCOCOEvaluator

from ..common.data.coco import dataloader
from ..common.models.yolact_plus import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from .yolact_regnety_4gf_FPN_550 import model as regnet_yolact
from .yolact_regnety_4gf_FPN_550 import train

model.backbone.bottom_up = regnet_yolact.backbone.bottom_up
model.backbone.in_features = regnet_yolact.backbone.in_features
model.pixel_mean = regnet_yolact.pixel_mean
model.pixel_std = regnet_yolact.pixel_std
model.to_rgb = regnet_yolact.to_rgb
train.output_dir = "./output/yolact_plus_regnety_4gf_FPN_550"
# Boxes are scored with the class score, masks with the re-scored one (official rescore_bbox=False).
dataloader.evaluator._target_ = YolactCOCOEvaluator
