"""YOLACT's FPN as a Detectron2 Backbone wrapping any bottom-up Detectron2 backbone.

Why not Detectron2's FPN: YOLACT upsamples bilinearly to the exact lateral size (69/35/18 at 550,
where D2 does nearest x2), applies ReLU to the P3-P5 outputs, and makes P6 from the ReLU'd P5 and
P7 from P6 with stride-2 3x3 convs and no ReLU (D2's LastLevelP6P7 puts a ReLU before P7).
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone


class YolactFPN(Backbone):
    """C3-C5 of `bottom_up` -> P3-P7 (256 channels by default).

    Args:
        bottom_up: any Detectron2 Backbone returning the features named in `in_features`.
        in_features: three bottom-up feature names, finest first (e.g. res3, res4, res5).
        out_channels: FPN width (official 256).
        num_downsample: extra levels made by stride-2 convs from the last one (official 2: P6, P7).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str] = ("res3", "res4", "res5"),
        out_channels: int = 256,
        num_downsample: int = 2,
    ):
        super().__init__()
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"YolactFPN: bottom-up backbone {type(bottom_up).__name__} has no feature(s) {missing}; "
                f"it outputs {sorted(shapes)}. Set in_features (and the backbone's out_features) to match."
            )
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        in_channels = [shapes[f].channels for f in self.in_features]
        in_strides = [shapes[f].stride for f in self.in_features]
        # Index 0 is the finest level (C3/P3); the official code stores them coarsest first.
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
        self.output_convs = nn.ModuleList(
            [nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels]
        )
        self.downsample_convs = nn.ModuleList(
            [nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(num_downsample)]
        )
        first_level = int(round(torch.log2(torch.tensor(float(in_strides[0]))).item()))
        self._out_features = [f"p{first_level + i}" for i in range(len(in_channels) + num_downsample)]
        strides = in_strides + [in_strides[-1] * 2 ** (i + 1) for i in range(num_downsample)]
        self._out_feature_channels = {f: out_channels for f in self._out_features}
        self._out_feature_strides = dict(zip(self._out_features, strides))

    @property
    def size_divisibility(self) -> int:
        # YOLACT feeds 550x550 unpadded: padding to a multiple of 32 would change every grid.
        return 0

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        merged, _ = self.forward_phase1(self.bottom_up(x))
        return self.forward_phase2(merged)

    # YolactEdge splits the FPN in two: phase 1 is what it warps from a keyframe, phase 2 what it
    # reruns on every frame. forward() == forward_phase2(forward_phase1(...)[0]), bit for bit.
    def forward_phase1(self, bottom_up: Dict[str, torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Bottom-up features -> (merged, laterals), both finest first (P3..P5 before the 3x3s).

        merged[i] = lateral_i + bilinear upsampled merged[i+1]; laterals[i] = the 1x1 conv of C_i
        alone (YolactEdge feeds the C3 lateral to its flow net).
        """
        feats = [bottom_up[f] for f in self.in_features]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        # Top-down: coarsest lateral first, each finer one adds the bilinear upsampled sum.
        merged: List[torch.Tensor] = [None] * len(feats)  # type: ignore[list-item]
        top = laterals[-1]
        merged[-1] = top
        for i in range(len(feats) - 2, -1, -1):
            top = F.interpolate(top, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            top = top + laterals[i]
            merged[i] = top
        return merged, laterals

    def forward_phase2(self, merged: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Phase-1 maps (finest first) -> P3..P7: 3x3 conv + ReLU per level, then P6/P7."""
        outs = [F.relu(conv(m), inplace=True) for conv, m in zip(self.output_convs, merged)]
        for conv in self.downsample_convs:
            outs.append(conv(outs[-1]))  # no ReLU on P6/P7 (official relu_downsample_layers=False)
        return dict(zip(self._out_features, outs))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
            for f in self._out_features
        }
