"""YOLACT's prior (anchor) boxes, reproducing the official `PredictionModule.make_priors`.

Why not Detectron2's DefaultAnchorGenerator: YOLACT centres priors at `(j + 0.5) / conv_w` of the
input (a fractional stride, 550 / 69 at P3), its aspect ratio is w/h (D2: h/w), YOLACT v1 makes
every prior square by accident (`use_square_anchors`), and the result is relative (cx, cy, w, h),
not XYXY pixels.
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn


class YolactPriorGenerator(nn.Module):
    """Priors for every level of the FPN, in the official (cx, cy, w, h) layout relative to the input.

    Order (must line up with the head's outputs): level by level (P3 first), then row by row, column
    by column, then for each scale, for each aspect ratio.

    Args:
        scales: per level, the prior sizes. In pixels of the network input when `use_pixel_scales`
            (official: [[24], [48], [96], [192], [384]]; YOLACT++: three per level), else relative
            to the level's cell size.
        aspect_ratios: per level, the w/h aspect ratios (official [1, 1/2, 2] on every level).
        use_pixel_scales: official `backbone.use_pixel_scales`.
        preapply_sqrt: official `backbone.preapply_sqrt`; when False the square root of each ratio
            is taken here (w = s * sqrt(ar), h = s / sqrt(ar)).
        square_anchors: official `backbone.use_square_anchors` (YOLACT v1's "h = w" bug, kept for
            its weights): the relative height is set to the relative width.
    """

    def __init__(
        self,
        scales: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        use_pixel_scales: bool = True,
        preapply_sqrt: bool = False,
        square_anchors: bool = True,
    ):
        super().__init__()
        if len(scales) != len(aspect_ratios):
            raise ValueError(
                f"YolactPriorGenerator: got {len(scales)} levels of scales but {len(aspect_ratios)} "
                "levels of aspect ratios; give one list of each per FPN level."
            )
        self.scales = [list(map(float, s)) for s in scales]
        self.aspect_ratios = [list(map(float, a)) for a in aspect_ratios]
        self.use_pixel_scales = use_pixel_scales
        self.preapply_sqrt = preapply_sqrt
        self.square_anchors = square_anchors
        self._cache: Dict[Tuple, torch.Tensor] = {}

    @property
    def num_anchors_per_location(self) -> List[int]:
        return [len(s) * len(a) for s, a in zip(self.scales, self.aspect_ratios)]

    def _level_priors(self, level: int, conv_h: int, conv_w: int, image_h: int, image_w: int) -> torch.Tensor:
        # Per-location shapes (A, 2) = (w, h), in the order: for scale, for ratio.
        shapes = []
        for scale in self.scales[level]:
            for ar in self.aspect_ratios[level]:
                r = ar if self.preapply_sqrt else math.sqrt(ar)
                if self.use_pixel_scales:
                    # Official divides by cfg.max_size, which equals the (square) input size there;
                    # dividing by the actual input width/height also covers non-square inputs.
                    w, h = scale * r / image_w, scale / r / image_h
                else:
                    w, h = scale * r / conv_w, scale / r / conv_h
                if self.square_anchors:
                    h = w
                shapes.append((w, h))
        wh = torch.tensor(shapes, dtype=torch.float64)  # (A, 2)
        # Centres in float64 then cast, so values equal the official python-float computation.
        cy = (torch.arange(conv_h, dtype=torch.float64) + 0.5) / conv_h
        cx = (torch.arange(conv_w, dtype=torch.float64) + 0.5) / conv_w
        cyy, cxx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([cxx, cyy], dim=-1).reshape(-1, 1, 2)  # (H*W, 1, 2)
        num = centres.shape[0]
        priors = torch.cat(
            [centres.expand(num, wh.shape[0], 2), wh[None].expand(num, wh.shape[0], 2)], dim=-1
        )  # (H*W, A, 4)
        return priors.reshape(-1, 4).to(torch.float32)

    def forward(
        self, feature_sizes: Sequence[Tuple[int, int]], image_size: Tuple[int, int], device=None
    ) -> torch.Tensor:
        """
        Args:
            feature_sizes: (h, w) of each FPN level, P3 first.
            image_size: (H, W) of the network input (after resize and padding).
        Returns:
            priors: (P, 4) float32 (cx, cy, w, h) relative to the input.
        """
        if len(feature_sizes) != len(self.scales):
            raise ValueError(
                f"YolactPriorGenerator has {len(self.scales)} levels of scales but got "
                f"{len(feature_sizes)} feature maps; make `scales`/`aspect_ratios` match the FPN levels."
            )
        key = (tuple(tuple(int(v) for v in s) for s in feature_sizes), tuple(int(v) for v in image_size), str(device))
        priors = self._cache.get(key)
        if priors is None:
            image_h, image_w = (int(v) for v in image_size)
            priors = torch.cat(
                [self._level_priors(i, int(h), int(w), image_h, image_w) for i, (h, w) in enumerate(feature_sizes)]
            )
            if device is not None:
                priors = priors.to(device)
            self._cache[key] = priors
        return priors
