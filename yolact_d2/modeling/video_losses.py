"""YolactEdge's feature-matching loss: the warped P4/P5 of a frame against its own computed ones.

Official `Yolact.extra_loss` with `feature_matching_loss="cosine"`: for each pair (warped,
computed) the loss is mean(1 - cosine similarity over channels), averaged over the pairs, times
`fm_loss_alpha`. Locations (`fm_loss_loc`): "L" compares the phase-1 maps (after SPA for the warped
ones), "P" the maps after a phase-2 3x3 conv + ReLU whose weights are detached (only the warp
learns from it, not the conv), "L+P" both.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOCATIONS = ("L", "P", "L+P")

# Which phase-2 conv (our finest-first `output_convs` index) makes the "P" maps of P4 and P5.
# Official indexes its coarsest-first pred_layers with `layer_idx + 1`: P4 gets its own 3x3 conv,
# P5 gets P3's. We keep that, so the loss equals the official one on converted weights.
OFFICIAL_P_CONVS = (1, 0)


def _conv_relu_detached(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    bias = conv.bias.detach() if conv.bias is not None else None
    return F.relu(F.conv2d(x, conv.weight.detach(), bias, stride=conv.stride, padding=conv.padding))


def cosine_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over (N, h, w) of 1 - cos(pred, target) along channels; both (N, C, h, w)."""
    return (1 - F.cosine_similarity(pred, target, dim=1)).mean()


def feature_matching_loss(
    warped: Sequence[torch.Tensor],
    computed: Sequence[torch.Tensor],
    output_convs: Sequence[nn.Conv2d],
    locations: str = "L+P",
    p_convs: Sequence[int] = OFFICIAL_P_CONVS,
) -> torch.Tensor:
    """warped / computed: the phase-1 [P4, P5] of the warped and of the full pass (the latter is
    the target: pass it detached). output_convs: the FPN's phase-2 3x3 convs (finest first)."""
    if locations not in LOCATIONS:
        raise ValueError(f"feature matching: locations must be one of {LOCATIONS}, got {locations!r}.")
    if len(warped) != len(computed) or len(warped) != len(p_convs):
        raise ValueError(
            f"feature matching: {len(warped)} warped and {len(computed)} computed maps for {len(p_convs)} levels."
        )
    pairs = []
    for pred, target, conv_index in zip(warped, computed, p_convs):
        if locations != "P":
            pairs.append((pred, target))
        if locations != "L":
            conv = output_convs[conv_index]
            pairs.append((_conv_relu_detached(pred, conv), _conv_relu_detached(target, conv)))
    return sum(cosine_distance(p, t) for p, t in pairs) / len(pairs)
