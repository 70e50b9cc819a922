"""YolactEdge's feature transfer: what a keyframe keeps, the partial backbone, warping, SPA.

On a keyframe the full network runs and its phase-1 FPN maps (P3-P5 before the 3x3 convs) and
C3 lateral are kept (`KeyframeState`). On the frames in between only the bottom-up backbone up
to C3 runs (`partial_backbone_forward`); the flow net compares the two C3 laterals, the
keyframe's phase-1 P4/P5 are warped by the predicted flow (`warp_features`) and re-scaled, P3 is
rebuilt from the warped P4 and the current C3 lateral, and `SPA` refines P4/P5 with the current
lateral (Liu et al., "YolactEdge", ICRA 2021).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KeyframeState:
    """What a keyframe leaves for the frames that warp from it (batch first, as computed).

    features: phase-1 FPN maps of the keyframe, finest first ([P3, P4, P5], each (B, 256, h, w)).
    lateral: the keyframe's C3 lateral (B, 256, h3, w3).
    flow_feature: the flow net's reduced lateral of the keyframe (None for image models); kept so
        non-keyframes do not recompute it (official YolactEdge does, with the same result).
    input_size: network input (H, W); image_size: original frame (H, W).
    """

    features: List[torch.Tensor]
    lateral: torch.Tensor
    input_size: Tuple[int, int]
    image_size: Tuple[int, int]
    flow_feature: Optional[torch.Tensor] = None


def partial_backbone_forward(bottom_up: nn.Module, x: torch.Tensor, until: str) -> Dict[str, torch.Tensor]:
    """Runs `bottom_up` only up to (and including) its output named `until`; returns {until: map}.

    Uses the backbone's own modules (weights shared, in-place rewrites such as BN folding seen).
    Understood layouts: a `forward_until(x, name)` method (our MobileNetV2); a `stem` followed by
    `stage_names` attributes (Detectron2 ResNet, our ResNets and DarkNet); a `stem` and
    `stages_and_names` (Detectron2 RegNet / AnyNet).
    """
    if hasattr(bottom_up, "forward_until"):
        return {until: bottom_up.forward_until(x, until)}
    stem = getattr(bottom_up, "stem", None)
    if stem is not None and hasattr(bottom_up, "stage_names"):
        stages = [(getattr(bottom_up, name), name) for name in bottom_up.stage_names]
    elif stem is not None and hasattr(bottom_up, "stages_and_names"):
        stages = list(bottom_up.stages_and_names)
    else:
        raise TypeError(
            f"partial backbone: {type(bottom_up).__name__} has no forward_until(x, name), stem + stage_names "
            "or stem + stages_and_names, so it cannot be run up to C3 alone; add a forward_until method."
        )
    names = [name for _, name in stages]
    if until not in names:
        raise ValueError(f"partial backbone: {type(bottom_up).__name__} has no stage '{until}'; its stages are {names}.")
    x = stem(x)
    for stage, name in stages:
        x = stage(x)
        if name == until:
            return {until: x}
    raise AssertionError("unreachable")


def warp_features(feature: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warps `feature` (N, C, h, w) by `flow` (N, 2, h, w) in the official units.

    Official YolactEdge grid: output pixel (x, y) samples the input at normalised coordinates
    (2x/(w-1) - 1 + flow_x/8, 2y/(h-1) - 1 + flow_y/8) with align_corners=True, bilinear, zero
    padding. So a flow of 16/(w-1) (resp. 16/(h-1)) reads one pixel to the right (below).
    """
    if feature.shape[-2:] != flow.shape[-2:] or flow.shape[1] != 2:
        raise ValueError(
            f"warp_features: flow {tuple(flow.shape)} must be (N, 2) at the feature's size {tuple(feature.shape[-2:])}."
        )
    n, _, h, w = flow.shape
    if h < 2 or w < 2:
        raise ValueError(f"warp_features: a {h}x{w} map has no official warp grid (it divides by h-1, w-1); use a larger input.")
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device) * (2.0 / (h - 1)) - 1
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device) * (2.0 / (w - 1)) - 1
    base = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)], dim=0)  # (2, h, w)
    grid = (base.unsqueeze(0) + flow / 8).permute(0, 2, 3, 1)  # (N, h, w, 2) as (x, y)
    return F.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def pixel_shift_to_flow(dx: float, dy: float, size: Tuple[int, int]) -> Tuple[float, float]:
    """The official flow values that make `warp_features` read (dx, dy) pixels away at size (h, w)."""
    h, w = size
    return dx * 16.0 / (w - 1), dy * 16.0 / (h - 1)


class SPA(nn.Module):
    """Official YolactEdge SPA ("shift and refine"): P4/P5 += conv([P_i, C3 lateral at P_i's size]).

    refine_convs[i]: 3x3 conv (2C -> C) + LeakyReLU(0.1). The lateral is resized step by step
    (to P4's size, then that to P5's), as official.
    normalized: official `use_normalized_spa` (L2-normalise both inputs first; off in the vid configs).
    zero_init: beyond official (False: random init): the refine convs start at zero, so SPA starts as
        the identity and training can only move the warped maps away from the unwarped ones where that
        helps; with random init a short (CPU) schedule leaves them worse than no SPA at all.
    """

    def __init__(self, channels: int = 256, num_levels: int = 2, normalized: bool = False, zero_init: bool = False):
        super().__init__()
        self.normalized = normalized
        self.refine_convs = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))
                for _ in range(num_levels)
            ]
        )
        if zero_init:
            for refine in self.refine_convs:
                nn.init.zeros_(refine[0].weight)
                nn.init.zeros_(refine[0].bias)

    def forward(self, lateral: torch.Tensor, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        out = []
        for refine, x in zip(self.refine_convs, features):
            lateral = F.interpolate(lateral, size=x.shape[-2:], mode="bilinear", align_corners=False)
            pair = (F.normalize(x, dim=1), F.normalize(lateral, dim=1)) if self.normalized else (x, lateral)
            out.append(x + refine(torch.cat(pair, dim=1)))
        return out
