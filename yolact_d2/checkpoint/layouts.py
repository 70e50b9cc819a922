"""Official YOLACT checkpoint layouts (key, shape, dtype in save order) and synthetic checkpoints.

`official_layouts/<config>.keys.tsv` lists every key of the official model's state_dict for the
configs in data/config.py of github dbolya/yolact (and yolact_edge/data/config.py of
github haotian-liu/yolact_edge for the yolact_edge_* files). `synthetic_official_state_dict` fills such a
layout with seeded values: a stand-in for the real weights in tests and fidelity checks.
"""
import math
import os
import re
from collections import OrderedDict
from typing import List, Tuple

import torch

LAYOUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_layouts")
OFFICIAL_CONFIGS = (
    "yolact_resnet50_config",
    "yolact_base_config",
    "yolact_im400_config",
    "yolact_im700_config",
    "yolact_darknet53_config",
    "yolact_plus_resnet50_config",
    "yolact_plus_base_config",
    # YolactEdge (github haotian-liu/yolact_edge)
    "yolact_edge_resnet50_config",
    "yolact_edge_config",
    "yolact_edge_mobilenetv2_config",
    "yolact_edge_vid_resnet50_config",
    "yolact_edge_vid_config",
)


def official_layout(config_name: str) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
    """[(key, shape, dtype)] of an official config's state dict, in save order."""
    path = os.path.join(LAYOUT_DIR, f"{config_name}.keys.tsv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no official layout '{config_name}' in {LAYOUT_DIR}; known: {OFFICIAL_CONFIGS}")
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, shape, dtype = line.rstrip("\n").split("\t")
            dims = tuple(int(v) for v in shape.strip("[]").split(",") if v.strip())
            rows.append((key, dims, getattr(torch, dtype)))
    return rows


def synthetic_official_state_dict(config_name: str, seed: int = 0, conf_bias_std: float = 2.0) -> "OrderedDict[str, torch.Tensor]":
    """A seeded official-layout state dict whose forward pass gives usable activations.

    Convs: He-normal weights (std sqrt(2 / fan_in)) so activations keep their scale; biases
    small. BatchNorm: weight ~1, bias ~0, running mean ~0, running var ~1 (slightly perturbed so
    every parameter matters). The class-branch bias gets `conf_bias_std` so that some priors
    pass the 0.05 confidence threshold and detections exist.
    """
    g = torch.Generator().manual_seed(seed)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, shape, dtype in official_layout(config_name):
        if dtype == torch.int64:
            out[key] = torch.zeros(shape, dtype=dtype)
            continue
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "weight" and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            v = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
            if "conv2.conv_offset_mask" in key:
                v = v * 0.1  # small offsets: deformable convs stay close to regular ones
            elif "bbox_layer" in key:
                v = v * 0.1  # box deltas ~0.1-1: boxes near their priors, no exp overflow
            elif key.startswith("flow_net.pred"):
                # YolactEdge flows of a few pixels, scale ~1 and bias ~0: a warp that keeps the keyframe
                # features recognisable, as a trained one does
                v = v * 0.05
            elif key.startswith("spa."):
                v = v * 0.1  # SPA adds a small correction to the warped P4/P5
        elif leaf == "running_var":
            v = 1.0 + 0.1 * torch.rand(shape, generator=g)
        elif leaf == "running_mean":
            v = 0.05 * torch.randn(shape, generator=g)
        elif leaf == "weight" and (
            ".bn3." in key
            or key.endswith("1.weight") and ".downsample." in key
            or re.fullmatch(r"backbone\.layers\.\d+\.\d+\.conv\.[23]\.weight", key)  # MobileNetV2 projection BN
        ):
            # last norm of each residual branch small (as zero-init-residual training would
            # leave it) so activations stay O(1) through 16-33 blocks
            v = 0.2 + 0.05 * torch.rand(shape, generator=g)
        elif leaf == "weight":  # norm scale
            v = 1.0 + 0.05 * torch.randn(shape, generator=g)
        elif key.startswith("flow_net.pred") and ".scale." in key and leaf == "bias":
            v = 1.0 + 0.05 * torch.randn(shape, generator=g)  # official init: scale bias 1
        elif "conf_layer" in key and leaf == "bias":
            v = conf_bias_std * torch.randn(shape, generator=g)
        else:  # biases
            v = 0.05 * torch.randn(shape, generator=g)
        out[key] = v.to(dtype)
    return out
