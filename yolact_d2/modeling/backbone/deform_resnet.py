"""ResNet with modulated deformable convolution (DCNv2), placed as YOLACT++ places it.

The deformable 3x3 conv keeps the official parameter layout (``conv2.weight``, ``conv2.bias``,
``conv2.conv_offset_mask.{weight,bias}``) so official YOLACT++ checkpoints convert key for key,
and runs on ``torchvision.ops.deform_conv2d`` (no Detectron2 ``_C`` needed).
Everything else is Detectron2's own ResNet (stem, stages, shortcut, freezing).
"""
from typing import List, Optional, Sequence

import torch
from torch import nn
from torchvision.ops import deform_conv2d

from detectron2.layers import CNNBlockBase, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet

__all__ = [
    "ModulatedDeformConv2d",
    "DeformableBottleneckBlock",
    "official_deform_flags",
    "make_deform_resnet_stages",
    "build_deform_resnet",
    "build_yolact_deform_resnet_backbone",
]

_NUM_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 conv that predicts its own offsets and modulation mask from its input.

    Same maths as the official YOLACT++ ``DCN`` module: ``conv_offset_mask`` (a biased conv with
    the same kernel/stride/padding) gives ``3*k*k`` channels split into thirds ``(o1, o2, m)``;
    the offset is ``cat(o1, o2)`` read as (dy, dx) pairs per kernel tap (channel ``2t`` = dy of
    tap t, ``2t+1`` = dx), the mask is ``sigmoid(m)``. Like Detectron2's ``Conv2d`` it applies an
    optional ``norm`` and ``activation`` after the conv, so ``bn2`` maps to ``conv2.norm``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        bias: bool = True,
        norm: nn.Module = None,
        activation=None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)
        self.padding = (padding, padding)
        self.dilation = (dilation, dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        # Official DCN always has a bias (even when followed by BN); keep it so weights load.
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        num_taps = kernel_size * kernel_size
        # offset conv: dilation must match the main conv so both produce the same grid.
        self.conv_offset_mask = nn.Conv2d(
            in_channels,
            3 * num_taps,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=True,
        )
        self.norm = norm
        self.activation = activation
        self.reset_parameters()

    def reset_parameters(self):
        # Official init: zero offset/mask conv (offsets 0, mask 0.5), zero bias.
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def offset_and_mask(self, x: torch.Tensor):
        """x: (B, C, H, W) -> offset (B, 2*k*k, Ho, Wo), mask (B, k*k, Ho, Wo)."""
        o1, o2, m = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offset_and_mask(x)
        weight, bias, dtype = self.weight, self.bias, x.dtype
        if dtype == torch.bfloat16:  # torchvision's deform_conv2d has no bfloat16 kernel: float32, cast back
            x, offset, mask, weight = x.float(), offset.float(), mask.float(), weight.float()
            bias = bias.float() if bias is not None else None
        # torchvision reads offsets as (dy, dx) per tap and samples like DCNv2 (zero outside).
        x = deform_conv2d(
            x,
            offset,
            weight,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        ).to(dtype)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}"
        )


class DeformableBottleneckBlock(BottleneckBlock):
    """Detectron2's BottleneckBlock whose 3x3 conv is optionally a :class:`ModulatedDeformConv2d`.

    With ``deform=False`` it is exactly ``BottleneckBlock`` (same keys), so one block class
    covers a whole stage where only some blocks are deformable (``deform_per_block``).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        *,
        bottleneck_channels,
        stride=1,
        num_groups=1,
        norm="BN",
        stride_in_1x1=False,
        dilation=1,
        deform=False,
    ):
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            stride=stride,
            num_groups=num_groups,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            dilation=dilation,
        )
        self.deform = deform
        if deform:
            if num_groups != 1:
                raise ValueError(
                    "DeformableBottleneckBlock: deformable 3x3 conv supports num_groups=1 only "
                    f"(got {num_groups}); use deform=False for grouped (ResNeXt) blocks."
                )
            stride_3x3 = 1 if stride_in_1x1 else stride
            self.conv2 = ModulatedDeformConv2d(
                bottleneck_channels,
                bottleneck_channels,
                kernel_size=3,
                stride=stride_3x3,
                padding=dilation,
                dilation=dilation,
                bias=True,
                norm=get_norm(norm, bottleneck_channels),
            )


def official_deform_flags(num_blocks: int, num_deform_last: int, interval: int) -> List[bool]:
    """Which blocks of a stage get DCN, by the official rule (backbone.py ``_make_layer``).

    Block i is deformable iff it is among the last ``num_deform_last`` blocks and
    ``i % interval == 0``. R50++: (0, 4, 6, 3) interval 1 -> every block of C3-C5;
    R101++: (0, 4, 23, 3) interval 3 -> blocks 0, 3, 6, ... of each stage.
    """
    if interval < 1:
        raise ValueError(f"deform interval must be >= 1, got {interval}")
    return [(i + num_deform_last >= num_blocks) and (i % interval == 0) for i in range(num_blocks)]


def make_deform_resnet_stages(
    depth: int,
    num_deform_last_per_stage: Sequence[int] = (0, 4, 6, 3),
    deform_interval: int = 1,
    norm="BN",
    stride_in_1x1: bool = False,
    num_blocks_per_stage: Optional[Sequence[int]] = None,
    **kwargs,
) -> List[List[CNNBlockBase]]:
    """Stages res2-res5 (as ``ResNet.make_default_stages``) with official DCN placement.

    ``num_deform_last_per_stage`` and ``deform_interval`` are the official ``dcn_layers`` and
    ``dcn_interval`` (config ``resnet50_dcnv2_backbone``: (0, 4, 6, 3), 1;
    ``resnet101_dcn_inter3_backbone``: (0, 4, 23, 3), 3). Stride is in the 3x3 conv like
    torchvision / the official ResNet (``stride_in_1x1=False``). ``num_blocks_per_stage``
    overrides the depth's block counts (e.g. (1, 1, 1, 1) for a small test network).
    """
    if depth not in _NUM_BLOCKS:
        raise ValueError(f"deformable ResNet depth must be one of {sorted(_NUM_BLOCKS)}, got {depth}")
    blocks_per_stage = list(num_blocks_per_stage or _NUM_BLOCKS[depth])
    if len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
        raise ValueError(f"num_blocks_per_stage needs 4 positive counts (res2..res5), got {blocks_per_stage}")
    if len(num_deform_last_per_stage) != 4:
        raise ValueError(
            "num_deform_last_per_stage needs one entry per stage res2..res5, "
            f"got {list(num_deform_last_per_stage)}"
        )
    in_channels = [64, 256, 512, 1024]
    out_channels = [256, 512, 1024, 2048]
    stages = []
    for n, first_stride, cin, cout, n_dcn in zip(
        blocks_per_stage, [1, 2, 2, 2], in_channels, out_channels, num_deform_last_per_stage
    ):
        stages.append(
            ResNet.make_stage(
                block_class=DeformableBottleneckBlock,
                num_blocks=n,
                stride_per_block=[first_stride] + [1] * (n - 1),
                deform_per_block=official_deform_flags(n, n_dcn, deform_interval),
                in_channels=cin,
                out_channels=cout,
                bottleneck_channels=cout // 4,
                norm=norm,
                stride_in_1x1=stride_in_1x1,
                **kwargs,
            )
        )
    return stages


def build_deform_resnet(
    depth: int = 50,
    num_deform_last_per_stage: Sequence[int] = (0, 4, 6, 3),
    deform_interval: int = 1,
    norm="FrozenBN",
    out_features=("res3", "res4", "res5"),
    freeze_at: int = 0,
    num_blocks_per_stage: Optional[Sequence[int]] = None,
) -> ResNet:
    """A Detectron2 ``ResNet`` backbone with YOLACT++'s deformable blocks (C3-C5 by default).

    Defaults are R50++ (``yolact_plus_resnet50``); R101++ is depth=101, (0, 4, 23, 3), interval 3.
    Batch norm frozen and every conv trained, as the plain YOLACT ResNet (build_yolact_resnet).
    """
    stem = BasicStem(in_channels=3, out_channels=64, norm=norm)
    stages = make_deform_resnet_stages(
        depth,
        num_deform_last_per_stage,
        deform_interval,
        norm=norm,
        stride_in_1x1=False,
        num_blocks_per_stage=num_blocks_per_stage,
    )
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)


@BACKBONE_REGISTRY.register()
def build_yolact_deform_resnet_backbone(cfg, input_shape=None):
    """yacs-config entry point: MODEL.RESNETS.DEPTH / OUT_FEATURES / NORM, MODEL.BACKBONE.FREEZE_AT,
    and the official DCN placement from MODEL.RESNETS.DEFORM_NUM_LAST (4 ints, default R50++:
    0 4 6 3) and MODEL.RESNETS.DEFORM_INTERVAL (default 1)."""
    r = cfg.MODEL.RESNETS
    return build_deform_resnet(
        depth=r.DEPTH,
        num_deform_last_per_stage=tuple(r.get("DEFORM_NUM_LAST", (0, 4, 6, 3))),
        deform_interval=r.get("DEFORM_INTERVAL", 1),
        norm=r.NORM,
        out_features=r.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )

