"""YOLACT's prototype branch (official `proto_net`): P3 -> K prototypes at twice P3's resolution."""
import torch
import torch.nn.functional as F
from torch import nn


class ProtoNet(nn.Module):
    """3x3 convs + ReLU, bilinear x2 upsample + ReLU, 3x3 conv + ReLU, 1x1 conv to K, ReLU.

    Output is channel-first (B, K, 2*Hp3, 2*Wp3); 138x138 at a 550 input. The final ReLU is the
    official `mask_proto_prototype_activation`.

    Args:
        in_channels: FPN width (256).
        num_prototypes: K (official 32).
        conv_dims: width of the hidden convs (256).
        num_convs_before: 3x3 convs before the upsample (official 3).
        num_convs_after: 3x3 convs after the upsample (official 1).
    """

    def __init__(
        self,
        in_channels: int = 256,
        num_prototypes: int = 32,
        conv_dims: int = 256,
        num_convs_before: int = 3,
        num_convs_after: int = 1,
    ):
        super().__init__()
        self.num_prototypes = num_prototypes
        before, c = [], in_channels
        for _ in range(num_convs_before):
            before.append(nn.Conv2d(c, conv_dims, 3, padding=1))
            c = conv_dims
        after = []
        for _ in range(num_convs_after):
            after.append(nn.Conv2d(c, conv_dims, 3, padding=1))
            c = conv_dims
        self.convs_before_upsample = nn.ModuleList(before)
        self.convs_after_upsample = nn.ModuleList(after)
        self.proto_pred = nn.Conv2d(c, num_prototypes, 1)

    def forward(self, p3: torch.Tensor) -> torch.Tensor:
        x = p3
        for conv in self.convs_before_upsample:
            x = F.relu(conv(x), inplace=True)
        # Official InterpolateModule(scale_factor=2) followed by a (no-op after ReLU'd input) ReLU.
        x = F.relu(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), inplace=True)
        for conv in self.convs_after_upsample:
            x = F.relu(conv(x), inplace=True)
        return F.relu(self.proto_pred(x), inplace=True)  # proto: (B, K, 2H, 2W)
