"""The official YOLACT ResNet (torchvision layout) assembled from Detectron2's ResNet parts.

Official YOLACT uses torchvision-style bottlenecks (stride on the 3x3 conv: D2's
`stride_in_1x1=False`), the usual 7x7 stem with 3x3/2 max-pool (D2's BasicStem) and batch norm
that is frozen during training (D2's FrozenBN). Its ImageNet weights expect RGB input normalised
with the official mean/std, which the meta-architecture applies.
"""
from typing import Sequence

from detectron2.modeling.backbone import BACKBONE_REGISTRY, ResNet
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock


def build_yolact_resnet(
    depth: int = 50,
    out_features: Sequence[str] = ("res3", "res4", "res5"),
    norm: str = "FrozenBN",
    freeze_at: int = 0,
) -> ResNet:
    """ResNet-50/101/152 in the official YOLACT layout; outputs C3-C5 as res3/res4/res5.

    freeze_at=0: official YOLACT trains every backbone conv (only batch norm is frozen).
    """
    if depth not in (50, 101, 152):
        raise ValueError(f"build_yolact_resnet: depth must be 50, 101 or 152 (official YOLACT), got {depth}.")
    stem = BasicStem(in_channels=3, out_channels=64, norm=norm)
    stages = ResNet.make_default_stages(
        depth, block_class=BottleneckBlock, norm=norm, stride_in_1x1=False, num_groups=1, dilation=1
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
