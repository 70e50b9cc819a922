"""YOLACT++ ResNet-50-FPN, 550x550 (official yolact_plus_resnet50: 34.1 mask AP on COCO test-dev).

Deformable convs in every block of C3-C5, 9 priors per location, mask re-scoring; see
configs/common/models/yolact_plus.py. Official weights: yolact_plus_resnet50_54_800000.pth,
converted with tools/convert_yolact_weights.py.
"""
from yolact_d2.evaluation import YolactCOCOEvaluator

from ..common.data.coco import dataloader
from ..common.models.yolact_plus import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

train.output_dir = "./output/yolact_plus_R_50_FPN_550"
# Boxes are scored with the class score, masks with the re-scored one (official rescore_bbox=False).
dataloader.evaluator._target_ = YolactCOCOEvaluator
