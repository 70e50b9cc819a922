"""YolactEdge R50-FPN at 550 (official yolact_edge_resnet50), as a LazyConfig `model`.

YolactEdge = the YOLACT v1 model (configs/common/models/yolact.py, same head, priors and Fast
NMS) in the `YolactEdge` meta-architecture, whose FPN runs in two phases. Image models leave
`flow_net` / `spa` None; video models set them to `VIDEO_FLOW_NET` / `VIDEO_SPA` (official
yolact_edge_vid: FlowNetMini with a 256->64 pre-conv and 64/128/256 stages, SPA without
normalisation, P4/P5 warped with their own flow scale) and train on YouTube-VIS (40 classes).
"""
from detectron2.config import LazyCall as L

from yolact_d2.modeling import SPA, FlowNetMini, YolactEdge, set_num_classes
from yolact_d2.modeling.backbone import build_mobilenet_v2

from .yolact import model

model._target_ = YolactEdge
model.flow_net = None
model.spa = None

YOUTUBE_VIS_CLASSES = 40
VIDEO_FLOW_NET = L(FlowNetMini)(in_channels=256, reduce_channels=64, encode_channels=64, feature_channels=256)
VIDEO_SPA = L(SPA)(channels=256, num_levels=2, normalized=False)
# Official mobilenetv2_backbone: FPN from layers 3, 4, 6 (strides 8/16/32, 32/64/160 channels).
MOBILENET_V2 = L(build_mobilenet_v2)(out_features=["stage3", "stage4", "stage6"], norm="FrozenBN")


def make_video_model(model_cfg) -> None:
    """Turn a YolactEdge image `model` node into the official video model (flow net, SPA, 40 classes)."""
    model_cfg.flow_net = VIDEO_FLOW_NET
    model_cfg.spa = VIDEO_SPA
    set_num_classes(model_cfg, YOUTUBE_VIS_CLASSES)


def use_mobilenet_v2(model_cfg) -> None:
    """Put the official MobileNetV2 under the FPN of a YolactEdge `model` node."""
    model_cfg.backbone.bottom_up = MOBILENET_V2
    model_cfg.backbone.in_features = list(MOBILENET_V2.out_features)
