"""YOLACT ResNet-101-FPN, 550x550 (official yolact_base: 29.8 mask AP on COCO test-dev)."""
from ..common.models.yolact import model

model.backbone.bottom_up.depth = 101
