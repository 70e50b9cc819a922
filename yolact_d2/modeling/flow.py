"""FlowNetMini: YolactEdge's small flow network between two C3 laterals.

FlowNetS-style (the two inputs concatenated, no correlation layer). A 3x3 "pre-conv" + LeakyReLU
first reduces each 256-channel lateral to 64 channels (official `flow_net_pre_convs`); then three
conv stages (64, 128, 256 channels; the last two stride 2) and, coarse to fine, a prediction per
scale: a 2-channel flow and a per-channel scale and bias (256 each) for the warped feature.
Upsampling between scales is bilinear resize + 3x3 conv (official `upfeat*` / `upflow*`).

Outputs at the 1/4 scale (warps P5) and 1/2 scale (warps P4) of the C3 grid; the finest (1/1)
prediction only serves training losses and is skipped at inference (`finest=False`).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# (flow (N, 2, h, w), scale (N, C, h, w), bias (N, C, h, w)) at one scale
FlowPrediction = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _conv_lrelu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True))


class FlowPredictor(nn.Module):
    """One scale's prediction: 3x3 flow conv (no bias), 1x1 scale and bias convs (official
    FlowNetMiniPredLayer; the scale conv's bias starts at 1 so an untrained warp keeps its input)."""

    def __init__(self, in_channels: int, feature_channels: int = 256):
        super().__init__()
        self.flow = nn.Conv2d(in_channels, 2, 3, padding=1, bias=False)
        self.scale = nn.Conv2d(in_channels, feature_channels, 1)
        self.bias = nn.Conv2d(in_channels, feature_channels, 1)
        for m in (self.flow, self.scale, self.bias):
            nn.init.kaiming_normal_(m.weight, mode="fan_in")
        nn.init.ones_(self.scale.bias)
        nn.init.zeros_(self.bias.bias)

    def forward(self, x: torch.Tensor) -> FlowPrediction:
        return self.flow(x), self.scale(x), self.bias(x)


class FlowNetMini(nn.Module):
    """Flow between the current frame's and the keyframe's C3 laterals.

    Args:
        in_channels: lateral width (FPN width, 256).
        reduce_channels: width after the pre-conv (official `reduce_channels=[64]`).
        encode_channels: width of the first conv stage (official 64; then x2, x4).
        feature_channels: channels of the scale/bias maps (the FPN width, 256).
    """

    def __init__(self, in_channels: int = 256, reduce_channels: int = 64, encode_channels: int = 64,
                 feature_channels: int = 256):
        super().__init__()
        c = encode_channels
        self.pre_conv = _conv_lrelu(in_channels, reduce_channels)
        self.conv1 = nn.Sequential(_conv_lrelu(2 * reduce_channels, c), _conv_lrelu(c, c))
        self.conv2 = nn.Sequential(_conv_lrelu(c, 2 * c, stride=2), _conv_lrelu(2 * c, 2 * c))
        self.conv3 = nn.Sequential(_conv_lrelu(2 * c, 4 * c, stride=2), _conv_lrelu(4 * c, 4 * c))
        self.pred3 = FlowPredictor(4 * c, feature_channels)  # 1/4 scale
        self.upfeat3 = nn.Conv2d(4 * c, 2 * c, 3, padding=1, bias=False)
        self.upflow3 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.pred2 = FlowPredictor(4 * c + 2, feature_channels)  # 1/2 scale: conv2 + upfeat3 + upflow3
        self.upfeat2 = nn.Conv2d(4 * c + 2, c, 3, padding=1, bias=False)
        self.upflow2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.pred1 = FlowPredictor(2 * c + 2, feature_channels)  # 1/1 scale (training only)
        for seq in (self.pre_conv, self.conv1, self.conv2, self.conv3):
            for m in seq.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, 0.1, mode="fan_in")
                    nn.init.zeros_(m.bias)

    def reduce(self, lateral: torch.Tensor) -> torch.Tensor:
        """(N, 256, h, w) C3 lateral -> (N, 64, h, w): done once per frame (and kept for keyframes)."""
        return self.pre_conv(lateral)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, current: torch.Tensor, keyframe: torch.Tensor, finest: bool = False) -> List[FlowPrediction]:
        """Reduced laterals of the current frame and the keyframe -> predictions, coarsest first:
        [1/4 scale (for P5), 1/2 scale (for P4)] (+ 1/1 scale when `finest`)."""
        out1 = self.conv1(torch.cat((current, keyframe), dim=1))
        out2 = self.conv2(out1)
        out3 = self.conv3(out2)
        pred3 = self.pred3(out3)
        concat2 = torch.cat((out2, self.upfeat3(self._up(out3, out2)), self.upflow3(self._up(pred3[0], out2))), dim=1)
        pred2 = self.pred2(concat2)
        preds = [pred3, pred2]
        if finest:
            concat1 = torch.cat(
                (out1, self.upfeat2(self._up(concat2, out1)), self.upflow2(self._up(pred2[0], out1))), dim=1
            )
            preds.append(self.pred1(concat1))
        return preds


# ---------------------------------------------------------------------- flow units and the EPE loss
# Our data carry backward flow in PIXELS of the network input (target(x) ~ reference(x + flow));
# the official network predicts it in its own units, `flow_px * 2 / size * 8` (resolution-free: the
# same value at every scale). Conversions happen only here, inside the model and its losses.
def pixel_flow_to_official(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) flow in pixels of an H x W image -> official units (u * 16 / W, v * 16 / H)."""
    h, w = flow.shape[-2:]
    return flow * flow.new_tensor([16.0 / w, 16.0 / h]).view(1, 2, 1, 1)


def official_flow_to_pixels(flow: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, 2, h, w) official-unit flow (any grid) -> pixels of an image of `size` (H, W), same grid."""
    h, w = size
    return flow * flow.new_tensor([w / 16.0, h / 16.0]).view(1, 2, 1, 1)


FLOW_LOSS_PENALTIES = ("epe", "squared")


def flow_epe_loss(predictions: List[torch.Tensor], gt: torch.Tensor, penalty: str = "epe") -> torch.Tensor:
    """Official OpticalFlowLoss: the sum over scales of the mean end-point error (L2 norm of
    pred - gt over the 2 channels), the gt bilinearly resized to each prediction's grid.

    predictions: flows (N, 2, h_i, w_i) in official units; gt: (N, 2, H, W) in official units.
    Beyond official: NaN pixels of the gt (no known flow, e.g. cut by an augmentation) are left
    out. The gt is resized as a weighted average of its valid pixels, and a pixel of a scale counts
    only where all its bilinear neighbours were valid; without NaNs this is exactly official.

    penalty: "epe" (official) or "squared" (beyond official: the squared end-point error). Every
    pixel's EPE gradient has length 1 whatever its error, so on data whose pixels are mostly static
    (the moving-shapes sets: 86%) the static ones outvote the moving ones and the net settles at the
    zero flow; the squared error weighs each pixel by its error (measured on MOVING_SHAPES_FAST:
    configs/yolact_edge/moving_shapes/flow_pretrain_fast.py).
    """
    if penalty not in FLOW_LOSS_PENALTIES:
        raise ValueError(f"flow_epe_loss: penalty must be one of {FLOW_LOSS_PENALTIES}, got {penalty!r}.")
    valid = torch.isfinite(gt).all(dim=1, keepdim=True).to(gt.dtype)  # (N, 1, H, W)
    filled = torch.where(valid.bool(), gt, torch.zeros_like(gt))
    total = gt.new_zeros(())
    for pred in predictions:
        size = pred.shape[-2:]
        weight = F.interpolate(valid, size=size, mode="bilinear", align_corners=False)
        gt_down = F.interpolate(filled, size=size, mode="bilinear", align_corners=False) / weight.clamp(min=1e-6)
        keep = (weight > 1 - 1e-4).squeeze(1)  # (N, h, w)
        diff = pred - gt_down
        epe = torch.norm(diff, dim=1) if penalty == "epe" else diff.square().sum(dim=1)  # (N, h, w)
        # A scale with no valid pixel adds 0 (and keeps the graph for DDP).
        total = total + (epe[keep].mean() if bool(keep.any()) else pred.sum() * 0.0)
    return total
