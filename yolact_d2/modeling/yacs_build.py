"""yacs-config builders: `build_yolact_fpn_backbone` (in BACKBONE_REGISTRY) and the keyword
arguments of `Yolact` from a config (`Yolact.from_config`). The keys are yolact_d2/config.py's;
each one maps onto the constructor argument the LazyConfig files set, so a yacs config and the
matching LazyConfig file build the same model."""
from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, build_backbone

from .fpn import YolactFPN
from .head import YolactHead
from .inference import YolactPostProcessor
from .loss import YolactLoss
from .maskiou import FastMaskIoUNet
from .priors import YolactPriorGenerator
from .protonet import ProtoNet

__all__ = ["build_yolact_fpn_backbone", "yolact_kwargs_from_cfg"]


def _yolact_node(cfg):
    if "YOLACT" not in cfg.MODEL:
        raise KeyError(
            "The config has no MODEL.YOLACT: call yolact_d2.add_yolact_config(cfg) after get_cfg() "
            "and before merge_from_file."
        )
    return cfg.MODEL.YOLACT


@BACKBONE_REGISTRY.register()
def build_yolact_fpn_backbone(cfg, input_shape: ShapeSpec = None) -> YolactFPN:
    """YolactFPN (MODEL.YOLACT.FPN.*) around the bottom-up backbone named by
    MODEL.YOLACT.FPN.BOTTOM_UP (a BACKBONE_REGISTRY entry, built from the same cfg)."""
    fpn = _yolact_node(cfg).FPN
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    if fpn.BOTTOM_UP == "build_yolact_fpn_backbone":
        raise ValueError("MODEL.YOLACT.FPN.BOTTOM_UP names the FPN builder itself; name a bottom-up backbone.")
    bottom_up = BACKBONE_REGISTRY.get(fpn.BOTTOM_UP)(cfg, input_shape)
    return YolactFPN(
        bottom_up, in_features=fpn.IN_FEATURES, out_channels=fpn.OUT_CHANNELS, num_downsample=fpn.NUM_DOWNSAMPLE
    )


def _num_anchors(anchor) -> int:
    per_level = {len(s) * len(a) for s, a in zip(anchor.SCALES, anchor.ASPECT_RATIOS)}
    if len(per_level) != 1:
        raise ValueError(
            f"MODEL.YOLACT.ANCHOR: the shared head needs the same number of priors on every level, got "
            f"len(SCALES[i]) x len(ASPECT_RATIOS[i]) = {sorted(per_level)}."
        )
    return per_level.pop()


def _arguments(node) -> Dict:
    """A sub-node's keys are its part's constructor arguments in upper case (LOSS.BOX_WEIGHT ->
    YolactLoss(box_weight=...)), so the yacs keys cannot drift from the constructors."""
    return {key.lower(): value for key, value in node.items()}


def yolact_kwargs_from_cfg(cfg) -> Dict:
    """The `Yolact(...)` keyword arguments of a yacs config (see yolact_d2/config.py)."""
    y = _yolact_node(cfg)
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    if y.PROTO_FEATURE not in shapes:
        raise ValueError(
            f"MODEL.YOLACT.PROTO_FEATURE={y.PROTO_FEATURE!r} is not an output of MODEL.BACKBONE.NAME="
            f"{cfg.MODEL.BACKBONE.NAME!r} ({sorted(shapes)}); use build_yolact_fpn_backbone."
        )
    width = shapes[y.PROTO_FEATURE].channels  # FPN width: protonet and head input
    num_classes = y.NUM_CLASSES
    return dict(
        backbone=backbone,
        protonet=ProtoNet(in_channels=width, num_prototypes=y.NUM_PROTOTYPES, **_arguments(y.PROTONET)),
        head=YolactHead(
            in_channels=width,
            num_classes=num_classes,
            num_anchors=_num_anchors(y.ANCHOR),
            num_prototypes=y.NUM_PROTOTYPES,
            **_arguments(y.HEAD),
        ),
        prior_generator=YolactPriorGenerator(**_arguments(y.ANCHOR)),
        num_classes=num_classes,
        criterion=YolactLoss(num_classes=num_classes, **_arguments(y.LOSS)),
        post_processor=YolactPostProcessor(max_detections=cfg.TEST.DETECTIONS_PER_IMAGE, **_arguments(y.TEST)),
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        input_format=cfg.INPUT.FORMAT,
        to_rgb=y.TO_RGB,
        resize_mode=y.RESIZE_MODE,
        input_size=y.INPUT_SIZE,
        max_size=y.MAX_SIZE or None,
        size_divisibility=y.SIZE_DIVISIBILITY,
        semseg_on=y.SEMSEG_ON,
        mask_rescoring=(
            FastMaskIoUNet(num_classes, channels=y.MASK_RESCORING.CHANNELS) if y.MASK_RESCORING.ENABLED else None
        ),
        proto_feature=y.PROTO_FEATURE,
        head_features=y.HEAD_FEATURES,
    )
