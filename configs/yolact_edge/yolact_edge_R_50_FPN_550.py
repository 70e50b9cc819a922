"""YolactEdge ResNet-50-FPN, 550x550, COCO (official yolact_edge_resnet50).

Official weights: yolact_edge_resnet50_54_800000.pth; convert with tools/convert_yolact_weights.py.
On single images it is YOLACT v1 with a two-phase FPN; see configs/common/models/yolact_edge.py."""
from ..common.data.coco import dataloader
from ..common.models.yolact_edge import model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 50
train.output_dir = "./output/yolact_edge_R_50_FPN_550"
