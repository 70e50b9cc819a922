"""YOLACT model parts; importing registers the meta-architecture and backbones."""
from . import backbone  # noqa: F401  (registers backbones)
from .fpn import YolactFPN
from .head import YolactHead
from .inference import YolactPostProcessor, decode_boxes
from .meta_arch import Yolact, set_head_width, set_num_classes
from .feature_transfer import SPA, KeyframeState, partial_backbone_forward, warp_features
from .flow import FlowNetMini
from .yolact_edge import YolactEdge
from .priors import YolactPriorGenerator
from .protonet import ProtoNet

__all__ = [
    "Yolact",
    "YolactEdge",
    "FlowNetMini",
    "SPA",
    "KeyframeState",
    "partial_backbone_forward",
    "warp_features",
    "YolactFPN",
    "YolactHead",
    "ProtoNet",
    "YolactPriorGenerator",
    "YolactPostProcessor",
    "decode_boxes",
    "set_head_width",
    "set_num_classes",
]
