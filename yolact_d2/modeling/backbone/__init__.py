# Plain import list: importing registers the backbones (shared with the backbones helper).
from .resnet import build_yolact_resnet, build_yolact_resnet_backbone
from .darknet import DarkNet, build_darknet53, build_yolact_darknet_backbone
from .deform_resnet import (
    DeformableBottleneckBlock,
    ModulatedDeformConv2d,
    build_deform_resnet,
    build_yolact_deform_resnet_backbone,
)
from .mobilenet import MobileNetV2, build_mobilenet_v2, build_yolact_mobilenet_v2_backbone
