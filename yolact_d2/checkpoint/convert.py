"""Official YOLACT checkpoint (dbolya/yolact `state_dict`) -> yolact_d2 model keys, strictly.

The mapping is a list of rules, tried in order; the first whose regex matches the whole official
key decides: a target template (``\\1``-style groups, or a function of the match) or ``None`` to
drop the key on purpose (e.g. BatchNorm's ``num_batches_tracked``). Other variants (DarkNet-53,
YOLACT++ deformable blocks and mask-IoU net) extend the table with `add_rules`.

Strictness: an official key no rule matches, two keys mapping to one target, a model key no
official key fills, a converted key the model lacks and a shape mismatch all raise
`ConversionError` naming the key and what to do.
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .safe_load import CheckpointFileError, load_checkpoint_file, model_state_from

Target = Union[None, str, Callable[["re.Match", Dict], str]]


class ConversionError(ValueError):
    """An official checkpoint that cannot be mapped exactly onto the model."""


@dataclass
class Rule:
    """`pattern` (regex, matched against the whole official key) -> `target`.

    target: a template for `re.Match.expand` (``backbone.bottom_up.res\\1``), a function
    (match, context) -> our key, or None to drop the key deliberately.
    """

    pattern: str
    target: Target
    note: str = ""
    _regex: "re.Pattern" = field(init=False, repr=False)

    def __post_init__(self):
        self._regex = re.compile(self.pattern)

    def apply(self, key: str, context: Dict) -> Tuple[bool, Optional[str]]:
        m = self._regex.fullmatch(key)
        if m is None:
            return False, None
        if self.target is None:
            return True, None
        if callable(self.target):
            return True, self.target(m, context)
        return True, m.expand(self.target)


def _resnet_stage(m: "re.Match", ctx: Dict) -> str:
    # Official backbone.layers.{i} is torchvision's layer{i+1}, i.e. Detectron2's res{i+2}.
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"backbone.bottom_up.res{stage + 2}.{block}.{rest}"


def _fpn_reversed(name: str) -> Callable[["re.Match", Dict], str]:
    # Official lat_layers/pred_layers are stored coarsest first (index 0 = C5/P5); ours finest first.
    def fn(m: "re.Match", ctx: Dict) -> str:
        return f"backbone.{name}.{ctx['num_fpn_inputs'] - 1 - int(m.group(1))}.{m.group(2)}"

    return fn


# Official make_net Sequential indices of yolact_base's proto_net: conv, relu pairs and the
# interpolate at index 6 (no weights).
_PROTO_INDEX = {"0": "convs_before_upsample.0", "2": "convs_before_upsample.1", "4": "convs_before_upsample.2",
                "8": "convs_after_upsample.0", "10": "proto_pred"}

_PARAM = r"(weight|bias|running_mean|running_var)"
# First torchvision MobileNetV2 feature index of official layers 0..8 (1, 1, 2, 3, 4, 3, 3, 1, 1 blocks).
_MOBILENET_STARTS = (0, 1, 2, 4, 7, 11, 14, 17, 18)

RULES: List[Rule] = [
    Rule(r".*\.num_batches_tracked", None, "BatchNorm step counter: FrozenBN has none"),
    # ResNet (official ResNetBackbone, torchvision layout)
    Rule(r"backbone\.conv1\.weight", "backbone.bottom_up.stem.conv1.weight", "ResNet stem conv"),
    Rule(r"backbone\.bn1\." + _PARAM, r"backbone.bottom_up.stem.conv1.norm.\1", "ResNet stem BN"),
    Rule(
        r"backbone\.layers\.(\d+)\.(\d+)\.((?:conv\d|bn\d|downsample\.[01])\." + _PARAM + ")",
        _resnet_stage,
        "ResNet bottleneck blocks",
    ),
    # FPN
    Rule(r"fpn\.lat_layers\.(\d+)\.(weight|bias)", _fpn_reversed("lateral_convs"), "FPN lateral 1x1"),
    Rule(r"fpn\.pred_layers\.(\d+)\.(weight|bias)", _fpn_reversed("output_convs"), "FPN output 3x3"),
    Rule(r"fpn\.downsample_layers\.(\d+)\.(weight|bias)", r"backbone.downsample_convs.\1.\2", "FPN P6/P7"),
    # Protonet
    Rule(r"proto_net\.(0|2|4|8|10)\.(weight|bias)", lambda m, c: f"protonet.{_PROTO_INDEX[m.group(1)]}.{m.group(2)}",
         "protonet convs"),
    # Shared prediction head (only prediction_layers.0 holds weights)
    Rule(r"prediction_layers\.0\.upfeature\.(\d+)\.(weight|bias)",
         lambda m, c: f"head.upfeature.{int(m.group(1)) // 2}.{m.group(2)}", "head extra conv"),
    Rule(r"prediction_layers\.0\.bbox_layer\.(weight|bias)", r"head.bbox_pred.\1", "box branch"),
    Rule(r"prediction_layers\.0\.conf_layer\.(weight|bias)", r"head.cls_score.\1", "class branch"),
    Rule(r"prediction_layers\.0\.mask_layer\.(weight|bias)", r"head.coef_pred.\1", "coefficient branch"),
    Rule(r"semantic_seg_conv\.(weight|bias)", r"semantic_seg_conv.\1", "semantic segmentation (training)"),
    # YOLACT++: deformable 3x3 convs (conv2.weight / conv2.bias go through the bottleneck rule)
    Rule(
        r"backbone\.layers\.(\d+)\.(\d+)\.conv2\.conv_offset_mask\.(weight|bias)",
        lambda m, c: f"backbone.bottom_up.res{int(m.group(1)) + 2}.{m.group(2)}.conv2.conv_offset_mask.{m.group(3)}",
        "YOLACT++ DCNv2 offset/mask conv",
    ),
    # YOLACT++: mask re-scoring net (official Sequential indices kept: conv at 0, 2, ..., 10)
    Rule(r"maskiou_net\.maskiou_net\.(\d+)\.(weight|bias)", r"mask_rescoring.convs.\1.\2", "FastMaskIoUNet"),
    # DarkNet-53 (official DarkNetBackbone): layers.{s} -> dark{s+1}; conv .0 / BN .1 -> conv / .norm
    Rule(r"backbone\._preconv\.0\.weight", "backbone.bottom_up.stem.weight", "DarkNet stem conv"),
    Rule(r"backbone\._preconv\.1\." + _PARAM, r"backbone.bottom_up.stem.norm.\1", "DarkNet stem BN"),
    Rule(
        r"backbone\.layers\.(\d+)\.0\.([01])\.(weight|bias|running_mean|running_var)",
        lambda m, c: f"backbone.bottom_up.dark{int(m.group(1)) + 1}.0."
        + ("" if m.group(2) == "0" else "norm.") + m.group(3),
        "DarkNet stride-2 conv",
    ),
    Rule(
        r"backbone\.layers\.(\d+)\.(\d+)\.(conv[12])\.([01])\.(weight|bias|running_mean|running_var)",
        lambda m, c: f"backbone.bottom_up.dark{int(m.group(1)) + 1}.{m.group(2)}.{m.group(3)}."
        + ("" if m.group(4) == "0" else "norm.") + m.group(5),
        "DarkNet residual blocks",
    ),
    # YolactEdge: the FPN in two phases (same layers as YOLACT's fpn.*)
    Rule(r"fpn_phase_1\.lat_layers\.(\d+)\.(weight|bias)", _fpn_reversed("lateral_convs"), "YolactEdge FPN laterals"),
    Rule(r"fpn_phase_2\.pred_layers\.(\d+)\.(weight|bias)", _fpn_reversed("output_convs"), "YolactEdge FPN 3x3"),
    Rule(r"fpn_phase_2\.downsample_layers\.(\d+)\.(weight|bias)", r"backbone.downsample_convs.\1.\2", "YolactEdge P6/P7"),
    # YolactEdge video parts: FlowNetMini (its pre-conv folded in) and SPA
    Rule(r"flow_net_pre_convs\.convs\.0\.0\.(weight|bias)", r"flow_net.pre_conv.0.\1", "FlowNetMini pre-conv"),
    Rule(r"flow_net\.(conv[123])\.([01])\.0\.(weight|bias)", r"flow_net.\1.\2.0.\3", "FlowNetMini encoder"),
    Rule(r"flow_net\.(pred[123])\.conv\.weight", r"flow_net.\1.flow.weight", "FlowNetMini flow"),
    Rule(r"flow_net\.(pred[123])\.(scale|bias)\.(weight|bias)", r"flow_net.\1.\2.\3", "FlowNetMini scale/bias"),
    Rule(r"flow_net\.(up(?:feat|flow)[23])\.weight", r"flow_net.\1.weight", "FlowNetMini upsampling"),
    Rule(r"spa\.refine_convs\.([01])\.0\.(weight|bias)", r"spa.refine_convs.\1.0.\2", "SPA"),
    # YolactEdge MobileNetV2 (official layers.{i}.{j} = torchvision features[start_i + j])
    Rule(r"backbone\.layers\.(7|8)\..*", None, "MobileNetV2 layers 7/8: computed officially, never read by the FPN"),
    Rule(r"backbone\.layers\.0\.([01])\." + _PARAM, r"backbone.bottom_up.features.0.\1.\2", "MobileNetV2 stem"),
    Rule(
        r"backbone\.layers\.(\d+)\.(\d+)\.(conv\.\d(?:\.\d)?\." + _PARAM + ")",
        lambda m, c: f"backbone.bottom_up.features.{_MOBILENET_STARTS[int(m.group(1))] + int(m.group(2))}.{m.group(3)}",
        "MobileNetV2 inverted residuals",
    ),
]


def _missing_video_parts(missing: Sequence[str]) -> str:
    """'flow_net (31 keys), spa (4 keys)' for the YolactEdge video modules among missing keys."""
    counts: Dict[str, int] = {}
    for k in missing:
        top = k.split(".", 1)[0]
        if top in ("flow_net", "spa"):
            counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{name}.* ({n} keys)" for name, n in counts.items())


def add_rules(rules: Sequence[Rule], first: bool = True) -> None:
    """Extend the table (e.g. DarkNet-53, YOLACT++ keys). `first`: tried before the built-in rules."""
    if first:
        RULES[0:0] = list(rules)
    else:
        RULES.extend(rules)


def _context(official: Mapping[str, torch.Tensor]) -> Dict:
    lat = {int(m.group(1)) for k in official if (m := re.match(r"fpn(?:_phase_1)?\.lat_layers\.(\d+)\.", k))}
    return {"num_fpn_inputs": len(lat)}


def map_key(key: str, context: Dict, rules: Optional[Sequence[Rule]] = None) -> Tuple[bool, Optional[str]]:
    """(matched, our key or None when dropped) for one official key."""
    for rule in RULES if rules is None else rules:
        matched, target = rule.apply(key, context)
        if matched:
            return True, target
    return False, None


@dataclass
class ConversionSummary:
    mapped: int
    dropped: List[str]
    num_values: int

    def __str__(self) -> str:
        return (
            f"converted {self.mapped} tensors ({self.num_values:,} values); "
            f"dropped {len(self.dropped)} on purpose (BatchNorm num_batches_tracked etc.)"
        )


def convert_official_state_dict(
    official: Mapping[str, torch.Tensor],
    expected: Optional[Mapping[str, Sequence[int]]] = None,
    rules: Optional[Sequence[Rule]] = None,
) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionSummary]:
    """Map every official key to ours.

    Args:
        official: the official state dict.
        expected: our model's key -> shape (e.g. from `model.state_dict()`); when given, the
            result must fill exactly these keys with exactly these shapes.
        rules: rule table (default: the module's RULES).
    Returns:
        (converted state dict, summary).
    """
    context = _context(official)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    source: Dict[str, str] = {}
    dropped: List[str] = []
    for key, value in official.items():
        matched, target = map_key(key, context, rules)
        if not matched:
            raise ConversionError(
                f"official key '{key}' (shape {list(getattr(value, 'shape', []))}) matches no conversion rule. "
                "Is this an official YOLACT checkpoint of a supported config (yolact_base, yolact_resnet50, "
                "yolact_im400/700, yolact_darknet53, yolact_plus_*)? For a new variant add a Rule with "
                "yolact_d2.checkpoint.convert.add_rules."
            )
        if target is None:
            dropped.append(key)
            continue
        if target in out:
            raise ConversionError(
                f"official keys '{source[target]}' and '{key}' both map to '{target}'; "
                "a conversion rule is wrong, fix it in yolact_d2/checkpoint/convert.py."
            )
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"official key '{key}' holds a {type(value).__name__}, not a tensor.")
        out[target] = value
        source[target] = key

    if expected is not None:
        unexpected = [k for k in out if k not in expected]
        if unexpected:
            k = unexpected[0]
            raise ConversionError(
                f"official key '{source[k]}' maps to '{k}', which the model does not have "
                f"({len(unexpected)} such keys). The checkpoint does not fit this model config: "
                "use the config of the checkpoint's variant (e.g. R-101 vs R-50, YOLACT vs YOLACT++)."
            )
        missing = [k for k in expected if k not in out]
        video_parts = _missing_video_parts(missing)
        if video_parts and not any(k.startswith(("flow_net.", "spa.")) for k in out):
            raise ConversionError(
                f"the checkpoint has no weights for the video parts of this model: {video_parts}. It is an "
                "image checkpoint (YOLACT or YolactEdge COCO) and the config a YolactEdge video model; official "
                "YolactEdge would silently leave them random. Convert an official video checkpoint "
                "(e.g. yolact_edge_vid_847_50000.pth), or use the image config (configs/yolact_edge/yolact_edge_R_50_FPN_550.py)."
            )
        if missing:
            raise ConversionError(
                f"the checkpoint has no weights for model key '{missing[0]}' ({len(missing)} missing keys). "
                "The checkpoint is incomplete or of another variant than the model config; "
                "convert it with the config of its variant."
            )
        for k, v in out.items():
            want = tuple(expected[k])
            if tuple(v.shape) != want:
                hint = ""
                if k.startswith("head.cls_score") or k.startswith("semantic_seg_conv"):
                    hint = " The class count differs: set the model's num_classes to the checkpoint's."
                raise ConversionError(
                    f"official key '{source[k]}' has shape {list(v.shape)} but model key '{k}' needs "
                    f"{list(want)}.{hint} Check that the config matches the checkpoint's variant."
                )
    summary = ConversionSummary(
        mapped=len(out), dropped=dropped, num_values=sum(int(v.numel()) for v in out.values())
    )
    return out, summary


# ---------------------------------------------------------------------------------- variants
def detect_variant(official: Mapping[str, torch.Tensor]) -> Dict:
    """Guess the official config from the keys: backbone, depth, YOLACT++, class/anchor counts."""
    keys = list(official)
    info: Dict = {"plus": any(k.startswith("maskiou_net.") for k in keys)}
    # YolactEdge: its FPN is saved in two phases; video models add the flow net (and SPA).
    info["edge"] = any(k.startswith("fpn_phase_1.") for k in keys)
    info["video"] = any(k.startswith(("flow_net.", "flow_net_pre_convs.")) for k in keys)
    info["spa"] = any(k.startswith("spa.") for k in keys)
    if "backbone.layers.1.0.conv.0.0.weight" in official:
        info["backbone"] = "mobilenetv2"
    elif "backbone.layers.0.0.0.weight" in official:
        info["backbone"] = "darknet53"
    elif "backbone.conv1.weight" in official:
        blocks = {int(m.group(1)) for k in keys if (m := re.match(r"backbone\.layers\.2\.(\d+)\.", k))}
        depth = {6: 50, 23: 101, 36: 152}.get(len(blocks))
        if depth is None:
            raise ConversionError(
                f"backbone.layers.2 has {len(blocks)} blocks: not ResNet-50 (6), -101 (23) or -152 (36)."
            )
        info["backbone"] = "resnet"
        info["depth"] = depth
    else:
        raise ConversionError(
            "cannot tell the backbone: neither 'backbone.conv1.weight' (ResNet), "
            "'backbone.layers.0.0.0.weight' (DarkNet-53) nor 'backbone.layers.1.0.conv.0.0.weight' "
            "(MobileNetV2) is in the checkpoint. Is it an official YOLACT / YolactEdge one?"
        )
    box = official.get("prediction_layers.0.bbox_layer.weight")
    conf = official.get("prediction_layers.0.conf_layer.weight")
    if box is None or conf is None:
        raise ConversionError(
            "the checkpoint has no 'prediction_layers.0.bbox_layer.weight' / 'conf_layer.weight': "
            "not an official YOLACT state dict."
        )
    anchors = box.shape[0] // 4
    info["num_anchors"] = anchors
    info["num_classes"] = conf.shape[0] // anchors - 1  # official counts the background class
    return info


def default_config_for(info: Dict) -> str:
    """Config file (relative to the repository) for a detected variant at 550."""
    if info.get("edge"):
        backbone = "mobilenetv2" if info["backbone"] == "mobilenetv2" else f"R_{info.get('depth')}"
        if backbone not in ("mobilenetv2", "R_50", "R_101"):
            raise ConversionError(f"no YolactEdge config for a {info['backbone']}-{info.get('depth')} checkpoint; pass --config.")
        return f"configs/yolact_edge/yolact_edge_{'vid_' if info.get('video') else ''}{backbone}_FPN_550.py"
    if info["backbone"] == "mobilenetv2":
        raise ConversionError("a MobileNetV2 checkpoint without 'fpn_phase_1.*' keys is not an official YolactEdge one.")
    if info["backbone"] == "darknet53":
        return "configs/yolact/yolact_D_53_FPN_550.py"
    plus = "plus_" if info["plus"] else ""
    return f"configs/yolact/yolact_{plus}R_{info['depth']}_FPN_550.py"


def is_torchvision_resnet(state: Mapping[str, torch.Tensor]) -> bool:
    """An ImageNet ResNet in torchvision's layout (official YOLACT's backbone init, e.g.
    resnet50-19c8e357.pth or resnet101_reducedfc.pth)."""
    return "layer1.0.conv1.weight" in state and "conv1.weight" in state


def torchvision_resnet_to_official(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """torchvision ResNet keys -> official YOLACT backbone keys (what its init_backbone does);
    the ImageNet classifier (fc.*) is dropped."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        m = re.match(r"layer(\d+)\.(.*)", key)
        out[f"backbone.layers.{int(m.group(1)) - 1}.{m.group(2)}" if m else f"backbone.{key}"] = value
    return out


def load_official_checkpoint(path: str) -> "OrderedDict[str, torch.Tensor]":
    """Read with the safe reader (yolact_d2.checkpoint.safe_load: no code from the pickle runs);
    accepts {"model": sd} too."""
    try:
        obj = model_state_from(load_checkpoint_file(path), path)
    except (CheckpointFileError, FileNotFoundError) as e:
        raise ConversionError(
            f"{e} Official YOLACT weights are plain state dicts of tensors (.pth)."
        ) from None
    return OrderedDict(obj)
