"""YOLACT on Detectron2's own ResNet-50 (its model-zoo weights and layout), 550x550.

The bottom-up network is Detectron2's standard R-50 exactly as in its model zoo
(common/models/mask_rcnn_fpn.py: MSRA weights, stride in the 1x1 conv, FrozenBN, stem + res2
frozen, BGR input with Detectron2's pixel mean and unit std). YOLACT's FPN, head, protonet,
priors and losses are unchanged; only the backbone and its input normalisation differ.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from ..common.data.coco import dataloader
from ..common.models.yolact import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
    stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
    out_features=["res3", "res4", "res5"],
    freeze_at=2,
)
model.pixel_mean = [103.530, 116.280, 123.675]
model.pixel_std = [1.0, 1.0, 1.0]
model.to_rgb = False  # MSRA weights take BGR
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "./output/yolact_d2R_50_FPN_550"
