"""YOLACT on a RegNet from Detectron2's model zoo: RegNetY-4.0GF (DDS), 550x550.

The bottom-up network is Detectron2's RegNet exactly as in its model zoo
(COCO-InstanceSegmentation/mask_rcnn_regnety_4gf_dds_fpn_1x.py: stem + s1 frozen, FrozenBN,
pycls ImageNet weights, BGR input with Detectron2's pixel mean and the pycls std); the YOLACT FPN
takes its stride 8/16/32 stages s2/s3/s4. Everything else is the YOLACT R-50 model.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import RegNet
from detectron2.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem

from ..common.data.coco import dataloader
from ..common.models.yolact import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up = L(RegNet)(
    stem_class=SimpleStem,
    stem_width=32,
    block_class=ResBottleneckBlock,
    depth=22,
    w_a=31.41,
    w_0=96,
    w_m=2.24,
    group_width=64,
    se_ratio=0.25,
    freeze_at=2,
    norm="FrozenBN",
    out_features=["s2", "s3", "s4"],
)
model.backbone.in_features = ["s2", "s3", "s4"]
model.pixel_mean = [103.530, 116.280, 123.675]
model.pixel_std = [57.375, 57.120, 58.395]
model.to_rgb = False  # pycls weights take BGR
train.init_checkpoint = "https://dl.fbaipublicfiles.com/pycls/dds_baselines/160906838/RegNetY-4.0GF_dds_8gpu.pyth"
train.output_dir = "./output/yolact_regnety_4gf_FPN_550"
