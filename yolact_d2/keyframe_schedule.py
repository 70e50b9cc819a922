"""When `VideoPredictor` runs the full YolactEdge network (a keyframe) and when it warps.

Official YolactEdge takes every `keyframe_interval`-th frame as a keyframe (frame_idx % 5 == 0 in
its eval.py) and warps the keyframe's features to the frames in between. `AdaptiveKeyframes`
(beyond official) also takes a keyframe when a warped frame looks unreliable: when the motion the
flow net predicts, or the residual between the current frame's C3 lateral and the keyframe's
warped onto it, passes a threshold; and it may stretch the gap up to `max_interval` when nothing
moves. Both measures come from tensors the warped pass computes anyway (no extra network run).
"""
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn.functional as F

from yolact_d2.modeling.feature_transfer import pixel_shift_to_flow, warp_features

__all__ = ["AdaptiveKeyframes", "as_adaptive", "warp_measures"]


@dataclass
class AdaptiveKeyframes:
    """Adaptive keyframe rule.

    Args:
        max_motion: take a keyframe when the mean flow magnitude (in pixels of the network input,
            e.g. of the 550x550 image) between the keyframe and this frame exceeds it.
        max_residual: take a keyframe when the relative warp residual
            ||lat_now - warp(lat_key)|| / ||lat_now|| of the C3 laterals exceeds it (0: perfect).
        max_interval: at most this many frames from one keyframe to the next whatever the
            measures say (None: twice the predictor's keyframe_interval).
    At least one of max_motion / max_residual must be set.
    """

    max_motion: Optional[float] = None
    max_residual: Optional[float] = None
    max_interval: Optional[int] = None

    def __post_init__(self):
        if self.max_motion is None and self.max_residual is None:
            raise ValueError("AdaptiveKeyframes: set max_motion (pixels) and/or max_residual (0..1); both are None.")
        for name in ("max_motion", "max_residual"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"AdaptiveKeyframes: {name} must be >= 0, got {value}.")
        if self.max_interval is not None and int(self.max_interval) < 1:
            raise ValueError(f"AdaptiveKeyframes: max_interval must be >= 1 frame, got {self.max_interval}.")

    def reason(self, measures: Mapping[str, float]) -> Optional[str]:
        """Why this warped frame should be a keyframe instead ("motion 3.1 > 2.0"), or None."""
        motion, residual = measures.get("motion"), measures.get("residual")
        if self.max_motion is not None and motion is not None and motion > self.max_motion:
            return f"motion {motion:.3g} > {self.max_motion:.3g}"
        if self.max_residual is not None and residual is not None and residual > self.max_residual:
            return f"residual {residual:.3g} > {self.max_residual:.3g}"
        return None


def as_adaptive(adaptive: Union[None, AdaptiveKeyframes, Mapping]) -> Optional[AdaptiveKeyframes]:
    """None, an AdaptiveKeyframes or its keyword dict -> AdaptiveKeyframes or None."""
    if adaptive is None or isinstance(adaptive, AdaptiveKeyframes):
        return adaptive
    if isinstance(adaptive, Mapping):
        unknown = sorted(set(adaptive) - {"max_motion", "max_residual", "max_interval"})
        if unknown:
            raise ValueError(f"adaptive: unknown key(s) {unknown}; use max_motion, max_residual, max_interval.")
        return AdaptiveKeyframes(**adaptive)
    raise TypeError(f"adaptive must be None, an AdaptiveKeyframes or a dict of its fields, got {type(adaptive).__name__}.")


def warp_measures(current: torch.Tensor, keyframe: torch.Tensor, flow: torch.Tensor, input_size) -> Dict[str, float]:
    """Motion and warp residual of one warped frame, from what its flow net saw and predicted.

    current, keyframe: the flow net's inputs, (B, C, h, w) reduced C3 laterals of this frame and of
    the keyframe; flow: its (B, 2, h', w') prediction in the official units of `warp_features`.
    motion: mean displacement length in pixels of the (H, W) network input. residual:
    ||current - keyframe warped by the flow|| / ||current|| (the flow resized to the C3 grid: the
    official units are normalised coordinates, so the values carry over unchanged).
    """
    h, w = flow.shape[-2:]
    per_px_x, per_px_y = pixel_shift_to_flow(1.0, 1.0, (h, w))  # flow units per grid pixel
    dx = flow[:, 0].float() / per_px_x * (input_size[1] / w)
    dy = flow[:, 1].float() / per_px_y * (input_size[0] / h)
    motion = float(torch.sqrt(dx * dx + dy * dy).mean())
    fine = F.interpolate(flow, size=current.shape[-2:], mode="bilinear", align_corners=False)
    warped = warp_features(keyframe, fine.to(keyframe.dtype))
    num = torch.linalg.vector_norm((current - warped).float())
    den = torch.linalg.vector_norm(current.float()).clamp(min=1e-12)
    return {"motion": motion, "residual": float(num / den)}
