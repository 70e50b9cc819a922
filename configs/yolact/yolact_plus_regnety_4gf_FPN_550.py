"""YOLACT++ head on a non-ResNet Detectron2 backbone: RegNetY-4.0GF (DDS) FPN, 550x550.

The ++ parts that do not depend on the backbone: 9 priors per location (3 scales x 3 ratios,
57,744 at 550) and mask re-scoring (FastMaskIoUNet); the deformable convs are a ResNet-only
change and do not apply. The bottom-up network is Detectron2's own RegNet exactly as in its model
zoo (COCO-InstanceSegmentation/mask_rcnn_regnety_4gf_dds_fpn_1x.py: stem and s1 frozen,
FrozenBN, pycls ImageNet weights, BGR input with Detectron2's pixel mean/std); the YOLACT FPN
takes its stride 8/16/32 stages s2/s3/s4.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import RegNet
from detectron2.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem

from ..common.data.coco import dataloader
from ..common.models.yolact_plus import model
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
# Detectron2's RegNet weights (pycls) take BGR with Detectron2's ImageNet mean/std.
model.pixel_mean = [103.53, 116.28, 123.675]
model.pixel_std = [57.375, 57.120, 58.395]
model.to_rgb = False
train.init_checkpoint = "https://dl.fbaipublicfiles.com/pycls/dds_baselines/160906838/RegNetY-4.0GF_dds_8gpu.pyth"
train.output_dir = "./output/yolact_plus_regnety_4gf_FPN_550"
