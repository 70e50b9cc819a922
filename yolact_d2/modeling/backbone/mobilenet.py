"""MobileNetV2 as a Detectron2 Backbone (YolactEdge's mobile backbone), torchvision's layout.

The modules are torchvision's own `mobilenet_v2().features` (ReLU6, inverted residuals), so
torchvision's ImageNet weights load as they are (`features.*` keys) and the official YolactEdge
weights map block by block. Batch norm is frozen (D2's FrozenBatchNorm2d), as official training
freezes it.

Official YolactEdge groups the 19 torchvision modules into 9 "layers" (stem, the seven
inverted-residual stages, the final 1x1 conv) and feeds its FPN from layers 3, 4 and 6 (strides
8/16/32, 32/64/160 channels). Our outputs are named after those layers: "stage0".."stage8".
"""
from typing import Dict, Sequence

import torch
import torchvision
from torch import nn

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

# Official layer i = torchvision features[start:end] (the standard t,c,n,s table, width 1.0).
STAGE_BLOCKS = (1, 1, 2, 3, 4, 3, 3, 1, 1)
STAGE_CHANNELS = (32, 16, 24, 32, 64, 96, 160, 320, 1280)
STAGE_STRIDES = (2, 2, 4, 8, 16, 16, 32, 32, 32)


def stage_ranges():
    """[(start, end)] torchvision feature indices of official layers 0..8."""
    out, start = [], 0
    for n in STAGE_BLOCKS:
        out.append((start, start + n))
        start += n
    return out


class MobileNetV2(Backbone):
    """torchvision MobileNetV2 features with outputs at official layer boundaries.

    Args:
        out_features: stage names to return (official YolactEdge: stage3, stage4, stage6).
        norm: "FrozenBN" (default, as official) or "BN" (trainable batch norm).
    Modules after the deepest requested stage are not built (official checkpoints hold layers 7
    and 8 too; the converter drops them on purpose).
    """

    def __init__(self, out_features: Sequence[str] = ("stage3", "stage4", "stage6"), norm: str = "FrozenBN"):
        super().__init__()
        names = [f"stage{i}" for i in range(len(STAGE_BLOCKS))]
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"MobileNetV2: unknown out_features {list(out_features)}; choose from {names}.")
        if norm not in ("FrozenBN", "BN"):
            raise ValueError(f"MobileNetV2: norm must be 'FrozenBN' or 'BN', got {norm!r}.")
        self._out_features = list(out_features)
        deepest = max(names.index(f) for f in out_features)
        self._ends = {names[i]: end for i, (_, end) in enumerate(stage_ranges()[: deepest + 1])}
        features = torchvision.models.mobilenet_v2(weights=None).features[: self._ends[names[deepest]]]
        self.features = FrozenBatchNorm2d.convert_frozen_batchnorm(features) if norm == "FrozenBN" else features
        self._out_feature_channels = {n: STAGE_CHANNELS[i] for i, n in enumerate(names[: deepest + 1])}
        self._out_feature_strides = {n: STAGE_STRIDES[i] for i, n in enumerate(names[: deepest + 1])}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"MobileNetV2 expects an (N, 3, H, W) image tensor, got shape {tuple(x.shape)}")
        wanted = {self._ends[f]: f for f in self._out_features}
        outputs = {}
        for i, block in enumerate(self.features):
            x = block(x)
            if i + 1 in wanted:
                outputs[wanted[i + 1]] = x
        return outputs

    def forward_until(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The output of stage `name` alone (YolactEdge's partial backbone)."""
        if name not in self._ends:
            raise ValueError(f"MobileNetV2: no stage '{name}' here; built stages: {list(self._ends)}.")
        for block in self.features[: self._ends[name]]:
            x = block(x)
        return x

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
            for f in self._out_features
        }


def build_mobilenet_v2(out_features: Sequence[str] = ("stage3", "stage4", "stage6"), norm: str = "FrozenBN") -> MobileNetV2:
    return MobileNetV2(out_features=out_features, norm=norm)


@BACKBONE_REGISTRY.register()
def build_yolact_mobilenet_v2_backbone(cfg, input_shape=None):
    """yacs-config entry point: MODEL.MOBILENET.{OUT_FEATURES, NORM} if present."""
    m = cfg.MODEL.get("MOBILENET", {})
    return build_mobilenet_v2(
        out_features=m.get("OUT_FEATURES", ("stage3", "stage4", "stage6")), norm=m.get("NORM", "FrozenBN")
    )
