"""YOLACT ResNet-50-FPN, 550x550 (official yolact_resnet50: 28.2 mask AP on COCO test-dev)."""
from ..common.models.yolact import model

model.backbone.bottom_up.depth = 50
