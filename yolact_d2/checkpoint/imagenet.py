"""ImageNet classification weights -> a backbone-only checkpoint for `train.init_checkpoint`.

Accepted files (both layouts are what official YOLACT's `init_backbone` reads):

- torchvision ResNets (`resnet50-0676ba61.pth`, `resnet101-63fe2227.pth`, and official YOLACT's
  `resnet50-19c8e357.pth` / `resnet101_reducedfc.pth`, which are torchvision files too): renamed
  to official YOLACT backbone keys (`torchvision_resnet_to_official`), the classifier dropped;
- official YOLACT's `darknet53.pth` (its DarkNetBackbone's own state dict): prefixed `backbone.`.

Both then go through the strict official-key rules of `convert.py`, so a key no rule maps, a
model backbone key nothing fills or a wrong shape is a `ConversionError`. Only the YOLACT++
deformable convs' offset/mask convs and biases are left out on purpose: ImageNet convs have none,
and they keep their official zero initialisation (as official YOLACT++ training starts).
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from .convert import (
    ConversionError,
    ConversionSummary,
    convert_official_state_dict,
    is_torchvision_resnet,
    torchvision_resnet_to_official,
)

__all__ = ["BACKBONE_PREFIX", "detect_imagenet_backbone", "default_config_for_imagenet", "convert_imagenet_backbone"]

BACKBONE_PREFIX = "backbone.bottom_up."
# Backbone keys ImageNet weights cannot fill, trained from their initialisation (see module doc).
_NOT_IN_IMAGENET = re.compile(r"\.conv_offset_mask\.|\.conv2\.bias$")  # YOLACT++ DCN only
_TORCHVISION_DEPTHS = {(2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101, (36, True): 152}


def _is_darknet53(state: Mapping[str, torch.Tensor]) -> bool:
    return "_preconv.0.weight" in state and "layers.0.0.0.weight" in state


def detect_imagenet_backbone(state: Mapping[str, torch.Tensor]) -> Dict:
    """{"backbone": "resnet", "depth": 50} / {"backbone": "darknet53"} from the keys."""
    if _is_darknet53(state):
        return {"backbone": "darknet53"}
    if is_torchvision_resnet(state):
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
        bottleneck = "layer1.0.conv3.weight" in state
        depth = _TORCHVISION_DEPTHS.get((len(blocks), bottleneck))
        if depth is None:
            raise ConversionError(f"torchvision ResNet with {len(blocks)} blocks in layer3: not ResNet-18/34/50/101/152.")
        return {"backbone": "resnet", "depth": depth}
    some = ", ".join(list(state)[:3])
    raise ConversionError(
        f"not an ImageNet backbone file this tool knows (keys start {some}): expected torchvision's ResNet "
        "layout (conv1.weight, layer1.0.conv1.weight, ...) or official YOLACT's darknet53.pth "
        "(_preconv.0.weight, layers.0.0.0.weight, ...). Official YOLACT detection weights go through "
        "tools/convert_yolact_weights.py."
    )


def default_config_for_imagenet(info: Dict) -> Optional[str]:
    """The repository's config for a detected backbone (None: pass --config)."""
    if info["backbone"] == "darknet53":
        return "configs/yolact/yolact_D_53_FPN_550.py"
    if info.get("depth") in (50, 101):
        return f"configs/yolact/yolact_R_{info['depth']}_FPN_550.py"
    return None


def _to_official(state: Mapping[str, torch.Tensor], info: Dict) -> Tuple["OrderedDict[str, torch.Tensor]", List[str]]:
    if info["backbone"] == "resnet":
        dropped = [k for k in state if k.startswith("fc.")]
        return torchvision_resnet_to_official(state), dropped
    keep = OrderedDict((f"backbone.{k}", v) for k, v in state.items() if k.startswith(("_preconv.", "layers.")))
    return keep, [k for k in state if not k.startswith(("_preconv.", "layers."))]


def convert_imagenet_backbone(
    state: Mapping[str, torch.Tensor], model_shapes: Mapping[str, Tuple[int, ...]]
) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionSummary, Dict]:
    """ImageNet state dict -> our `backbone.bottom_up.*` keys, strictly against the model's shapes.

    model_shapes: the whole model's key -> shape (e.g. from `model.state_dict()`).
    Returns (converted, summary, detected info)."""
    info = detect_imagenet_backbone(state)
    official, dropped = _to_official(state, info)
    expected = {
        k: v for k, v in model_shapes.items() if k.startswith(BACKBONE_PREFIX) and not _NOT_IN_IMAGENET.search(k)
    }
    if not expected:
        raise ConversionError(
            f"the model has no '{BACKBONE_PREFIX}*' keys: is the config a YOLACT model with a bottom-up backbone?"
        )
    converted, summary = convert_official_state_dict(official, expected)
    summary.dropped.extend(dropped)
    return converted, summary, info
