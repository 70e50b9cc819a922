"""YOLACT++ R50-FPN at 550 (official yolact_plus_resnet50), as a LazyConfig `model`.

YOLACT++ = the YOLACT model plus three changes (official data/config.py yolact_plus_base_config):
  * deformable (DCNv2) 3x3 convs in the backbone: R50++ every block of C3-C5
    (dcn_layers (0, 4, 6, 3), interval 1); R101++ every third block (0, 4, 23, 3), interval 3;
  * denser priors: 3 scales per level (s * 2**(j/3), s = 24..384) x ratios (1, 1/2, 2), real
    aspect ratios (no v1 square-anchor bug): 9 per location, 57,744 at 550;
  * mask re-scoring (FastMaskIoUNet): final score = class score x predicted mask IoU of its
    class; trained with weight 25 (maskiou_alpha), masks of <= 25 px area left out.
"""
from detectron2.config import LazyCall as L

from yolact_d2.modeling.backbone import build_deform_resnet
from yolact_d2.modeling.maskiou import FastMaskIoUNet

from .yolact import NUM_CLASSES, model

PLUS_SCALES_550 = [[s * 2 ** (j / 3.0) for j in range(3)] for s in (24, 48, 96, 192, 384)]

model.backbone.bottom_up = L(build_deform_resnet)(
    depth=50,
    num_deform_last_per_stage=(0, 4, 6, 3),
    deform_interval=1,
    norm="FrozenBN",
    out_features=["res3", "res4", "res5"],
)
model.head.num_anchors = 9  # 3 scales x 3 aspect ratios
model.prior_generator.scales = PLUS_SCALES_550
model.prior_generator.aspect_ratios = [[1.0, 0.5, 2.0]] * 5
model.prior_generator.square_anchors = False
model.mask_rescoring = L(FastMaskIoUNet)(num_classes=NUM_CLASSES, channels=(8, 16, 32, 64, 128))
model.criterion.maskiou_weight = 25.0
model.criterion.maskiou_discard_area = 25.0
