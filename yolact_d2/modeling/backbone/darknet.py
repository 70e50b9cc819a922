"""DarkNet-53 (YOLOv3's backbone) as the official YOLACT ``yolact_darknet53`` config builds it.

Layout (official ``DarkNetBackbone([1, 2, 8, 8, 4])``): a 3x3 stem conv to 32 channels, then five
stages, each a stride-2 3x3 conv doubling the channels followed by residual blocks
(1x1 conv to half the channels, 3x3 conv back, add the input). Every conv is
conv -> batch norm -> LeakyReLU(0.1) with no conv bias. Stage k has stride 2**k, so the YOLACT
FPN takes ``dark3``/``dark4``/``dark5`` (256/512/1024 channels at strides 8/16/32), the official
``selected_layers=[2, 3, 4]``. Official input: RGB in [0, 1] (no mean subtraction).
"""
from typing import Sequence

import torch.nn.functional as F
from torch import nn

from detectron2.layers import CNNBlockBase, Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

__all__ = ["DarkNetBlock", "DarkNet", "build_darknet53", "build_yolact_darknet_backbone"]


def _leaky_relu(x):
    # DarkNet's activation slope is 0.1 (not PyTorch's default 0.01).
    return F.leaky_relu(x, negative_slope=0.1, inplace=True)


def _conv_bn_leaky(cin: int, cout: int, kernel_size: int, stride: int, norm) -> Conv2d:
    return Conv2d(
        cin,
        cout,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        bias=False,
        norm=get_norm(norm, cout),
        activation=_leaky_relu,
    )


class DarkNetBlock(CNNBlockBase):
    """Residual block: channels -> channels/2 (1x1) -> channels (3x3), plus the input."""

    def __init__(self, channels: int, norm="FrozenBN"):
        super().__init__(channels, channels, 1)
        self.conv1 = _conv_bn_leaky(channels, channels // 2, 1, 1, norm)
        self.conv2 = _conv_bn_leaky(channels // 2, channels, 3, 1, norm)

    def forward(self, x):
        return self.conv2(self.conv1(x)) + x


class DarkNet(Backbone):
    """DarkNet as a Detectron2 Backbone; features ``dark1`` .. ``darkN`` (stage k at stride 2**k).

    Args:
        blocks_per_stage: residual blocks after each stride-2 conv (DarkNet-53: 1, 2, 8, 8, 4).
        stem_channels: width of the stem conv; stage k outputs ``stem_channels * 2**k``.
        norm: Detectron2 norm name or callable (default FrozenBN: inference and official
            training both keep batch statistics fixed).
        out_features: which stage outputs to return.
        freeze_at: 0 trains everything; k >= 1 freezes the stem and the first k-1 stages
            (same convention as Detectron2's ResNet: 1 = stem only).
    """

    def __init__(
        self,
        blocks_per_stage: Sequence[int] = (1, 2, 8, 8, 4),
        stem_channels: int = 32,
        norm="FrozenBN",
        out_features: Sequence[str] = ("dark3", "dark4", "dark5"),
        freeze_at: int = 0,
    ):
        super().__init__()
        self.stem = _conv_bn_leaky(3, stem_channels, 3, 1, norm)
        self.stage_names = []
        self._out_feature_channels = {"stem": stem_channels}
        self._out_feature_strides = {"stem": 1}
        channels, stride = stem_channels, 1
        for k, num_blocks in enumerate(blocks_per_stage, start=1):
            downsample = _conv_bn_leaky(channels, channels * 2, 3, 2, norm)
            channels, stride = channels * 2, stride * 2
            stage = nn.Sequential(downsample, *[DarkNetBlock(channels, norm) for _ in range(num_blocks)])
            name = f"dark{k}"
            self.add_module(name, stage)
            self.stage_names.append(name)
            self._out_feature_channels[name] = channels
            self._out_feature_strides[name] = stride
        unknown = [f for f in out_features if f not in self._out_feature_channels]
        if unknown:
            raise ValueError(
                f"DarkNet: unknown out_features {unknown}; available: {list(self._out_feature_channels)}"
            )
        self._out_features = list(out_features)
        # Stop after the deepest requested stage (no wasted compute, no unused parameters).
        deepest = max(self.stage_names.index(f) if f != "stem" else -1 for f in self._out_features)
        for name in self.stage_names[deepest + 1:]:
            delattr(self, name)
        self.stage_names = self.stage_names[: deepest + 1]
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0):
        if freeze_at >= 1:
            self._freeze_module(self.stem)
        for name in self.stage_names[: max(freeze_at - 1, 0)]:
            self._freeze_module(getattr(self, name))
        return self

    @staticmethod
    def _freeze_module(module: nn.Module):
        for p in module.parameters():
            p.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(module)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DarkNet expects an (N, 3, H, W) image tensor, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self):
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
            for f in self._out_features
        }


def build_darknet53(
    out_features: Sequence[str] = ("dark3", "dark4", "dark5"), norm="FrozenBN", freeze_at: int = 0
) -> DarkNet:
    """DarkNet-53 of the official ``yolact_darknet53`` config (C3-C5 = dark3-dark5)."""
    return DarkNet((1, 2, 8, 8, 4), 32, norm=norm, out_features=out_features, freeze_at=freeze_at)


@BACKBONE_REGISTRY.register()
def build_yolact_darknet_backbone(cfg, input_shape=None):
    """yacs-config entry point: MODEL.DARKNET.{OUT_FEATURES, NORM} if present, MODEL.BACKBONE.FREEZE_AT."""
    d = cfg.MODEL.get("DARKNET", {})
    return build_darknet53(
        out_features=d.get("OUT_FEATURES", ("dark3", "dark4", "dark5")),
        norm=d.get("NORM", "FrozenBN"),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
