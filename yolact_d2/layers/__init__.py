"""YOLACT's custom ops (Fast NMS, mask crop, mask paste): compiled kernels with a pure-PyTorch fallback."""
from .ops import (
    backend_info,
    crop_masks,
    crop_masks_pytorch,
    fast_nms,
    fast_nms_pytorch,
    paste_masks,
    paste_masks_pytorch,
)

__all__ = [
    "fast_nms",
    "crop_masks",
    "paste_masks",
    "backend_info",
    "fast_nms_pytorch",
    "crop_masks_pytorch",
    "paste_masks_pytorch",
]
