"""YOLACT DarkNet-53-FPN, 550x550 (official yolact_darknet53: 28.7 mask AP on COCO test-dev).

The official DarkNet backbone takes RGB in [0, 1] (darknet_transform: no mean subtraction, /255);
the FPN uses its stride 8/16/32 stages (official selected_layers [2, 3, 4]). Priors and the rest
are yolact_base's. Official weights: yolact_darknet53_54_800000.pth.
"""
from detectron2.config import LazyCall as L

from yolact_d2.modeling.backbone import build_darknet53

from ..common.data.coco import dataloader
from ..common.models.yolact import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up = L(build_darknet53)(out_features=["dark3", "dark4", "dark5"], norm="FrozenBN")
model.backbone.in_features = ["dark3", "dark4", "dark5"]
model.pixel_mean = [0.0, 0.0, 0.0]
model.pixel_std = [255.0, 255.0, 255.0]
model.to_rgb = True
train.output_dir = "./output/yolact_D_53_FPN_550"
