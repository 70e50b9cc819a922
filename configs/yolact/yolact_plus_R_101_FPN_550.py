"""YOLACT++ ResNet-101-FPN, 550x550 (official yolact_plus_base: 34.6 mask AP on COCO test-dev).

As R50++ but ResNet-101 with a deformable 3x3 conv in every third block of C3-C5 (official
resnet101_dcn_inter3_backbone: dcn_layers (0, 4, 23, 3), dcn_interval 3 -> res3 blocks 0, 3;
res4 blocks 0, 3, ..., 21; res5 block 0). Official weights: yolact_plus_base_54_800000.pth.
"""
from yolact_d2.evaluation import YolactCOCOEvaluator

from ..common.data.coco import dataloader
from ..common.models.yolact_plus import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 101
model.backbone.bottom_up.num_deform_last_per_stage = (0, 4, 23, 3)
model.backbone.bottom_up.deform_interval = 3
train.output_dir = "./output/yolact_plus_R_101_FPN_550"
# Boxes are scored with the class score, masks with the re-scored one (official rescore_bbox=False).
dataloader.evaluator._target_ = YolactCOCOEvaluator
