"""YOLACT R50-FPN at 550x550 (official yolact_resnet50), as a LazyConfig `model`.

Experiment files import this and override parts (backbone depth, input size, prior scales, ...).
Defaults equal the official COCO settings: 80 classes, squash resize to 550, Fast NMS IoU 0.5,
top 200 per class, 100 detections, confidence 0.05, score threshold 0, crop on.
"""
from detectron2.config import LazyCall as L

from yolact_d2.modeling import ProtoNet, Yolact, YolactFPN, YolactHead, YolactPostProcessor, YolactPriorGenerator
from yolact_d2.modeling.backbone import build_yolact_resnet
from yolact_d2.modeling.loss import YolactLoss

NUM_CLASSES = 80
# Official yolact_base: one pixel scale per level, ratios 1, 1/2, 2 (w/h), v1 square-anchor bug.
OFFICIAL_SCALES_550 = [[24], [48], [96], [192], [384]]

model = L(Yolact)(
    backbone=L(YolactFPN)(
        bottom_up=L(build_yolact_resnet)(depth=50, out_features=["res3", "res4", "res5"], norm="FrozenBN"),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        num_downsample=2,
    ),
    protonet=L(ProtoNet)(in_channels=256, num_prototypes=32),
    head=L(YolactHead)(in_channels=256, num_classes=NUM_CLASSES, num_anchors=3, num_prototypes=32),
    prior_generator=L(YolactPriorGenerator)(
        scales=OFFICIAL_SCALES_550,
        aspect_ratios=[[1.0, 0.5, 2.0]] * 5,
        use_pixel_scales=True,
        preapply_sqrt=False,
        square_anchors=True,
    ),
    num_classes=NUM_CLASSES,
    criterion=L(YolactLoss)(num_classes=NUM_CLASSES),
    post_processor=L(YolactPostProcessor)(
        conf_thresh=0.05,
        nms_iou=0.5,
        top_k=200,
        max_detections=100,
        score_thresh=0.0,
        class_agnostic=False,
        standard_nms=False,
        crop=True,
    ),
    # Official normalisation (BGR mean/std) and RGB network input for the ImageNet ResNet weights.
    pixel_mean=[103.94, 116.78, 123.68],
    pixel_std=[57.38, 57.12, 58.40],
    input_format="BGR",
    to_rgb=True,
    resize_mode="squash",
    input_size=550,
    semseg_on=True,
)


def scaled_official_scales(input_size: int):
    """Official im400/im700 rule: int(scale / 550 * input_size) for each level's scale."""
    return [[int(s[0] / 550 * input_size)] for s in OFFICIAL_SCALES_550]
