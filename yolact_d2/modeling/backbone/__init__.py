# Plain import list: importing registers the backbones (shared with the backbones helper).
from .resnet import build_yolact_resnet, build_yolact_resnet_backbone
