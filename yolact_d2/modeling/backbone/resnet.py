"""The official YOLACT ResNet (torchvision layout) assembled from Detectron2's ResNet parts.

Official YOLACT uses torchvision-style bottlenecks (stride on the 3x3 conv: D2's
`stride_in_1x1=False`), the usual 7x7 stem with 3x3/2 max-pool (D2's BasicStem) and batch norm
that is frozen during training (D2's FrozenBN). Its ImageNet weights expect RGB input normalised
with the official mean/std, which the meta-architecture applies.

ResNet-18/34 (asked for by YolactEdge users; no official YOLACT weights exist) are torchvision's
resnet18/34: two-conv BasicBlocks (D2's BasicBlock, the same layout), C3-C5 of 128/256/512 channels.
"""
from typing import Sequence

from detectron2.modeling.backbone import BACKBONE_REGISTRY, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

BASIC_BLOCK_DEPTHS = (18, 34)  # torchvision BasicBlock ResNets
BOTTLENECK_DEPTHS = (50, 101, 152)  # official YOLACT (torchvision Bottleneck) ResNets


def build_yolact_resnet(
    depth: int = 50,
    out_features: Sequence[str] = ("res3", "res4", "res5"),
    norm: str = "FrozenBN",
    freeze_at: int = 0,
) -> ResNet:
    """ResNet-18/34/50/101/152 in torchvision's (= official YOLACT's) layout; outputs C3-C5 as
    res3/res4/res5.

    freeze_at=0: official YOLACT trains every backbone conv (only batch norm is frozen).
    """
    stem = BasicStem(in_channels=3, out_channels=64, norm=norm)
    if depth in BASIC_BLOCK_DEPTHS:
        # D2's BasicBlock is torchvision's (3x3 stride s, 3x3; 1x1 stride-s shortcut when the width changes).
        stages = ResNet.make_default_stages(depth, block_class=BasicBlock, norm=norm)
    elif depth in BOTTLENECK_DEPTHS:
        stages = ResNet.make_default_stages(
            depth, block_class=BottleneckBlock, norm=norm, stride_in_1x1=False, num_groups=1, dilation=1
        )
    else:
        raise ValueError(
            f"build_yolact_resnet: depth must be one of {BASIC_BLOCK_DEPTHS + BOTTLENECK_DEPTHS} "
            f"(torchvision ResNets; 50/101/152 as official YOLACT), got {depth}."
        )
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)


@BACKBONE_REGISTRY.register()
def build_yolact_resnet_backbone(cfg, input_shape=None):
    """yacs-config entry point (MODEL.RESNETS.DEPTH / OUT_FEATURES / NORM, MODEL.BACKBONE.FREEZE_AT)."""
    return build_yolact_resnet(
        depth=cfg.MODEL.RESNETS.DEPTH,
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        norm=cfg.MODEL.RESNETS.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
