"""YolactEdge MobileNetV2-FPN, 550x550, COCO (official yolact_edge_mobilenetv2).

Official weights: yolact_edge_mobilenetv2_54_800000.pth; convert with tools/convert_yolact_weights.py."""
from ..common.data.coco import dataloader
from ..common.models.yolact_edge import model, use_mobilenet_v2
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

use_mobilenet_v2(model)
train.output_dir = "./output/yolact_edge_mobilenetv2_FPN_550"
