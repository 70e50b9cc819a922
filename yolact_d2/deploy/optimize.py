"""Inference-only rewrites of a Yolact model that keep its results (up to float rounding).

Used by `yolact_d2.Predictor`, `tools/benchmark.py` and the exporters:

* `fold_batch_norm`: a conv followed by a frozen (or eval-mode) batch norm is one affine map, so
  the norm is folded into the conv's weight and bias and removed. ResNet-50 has 53 such norms; each
  is a full pass over a feature map (~8% of the CPU time at 550x550 in a profile here).
* `fuse_head_predictors`: the head's box / class / coefficient 3x3 convs read the same input;
  one conv with their filters stacked (12 + 243 + 96 channels for COCO) does the work of three
  (that part ~1.8x faster in a CPU micro-benchmark here).
* `to_channels_last`: NHWC weights make oneDNN (CPU) and cuDNN (GPU, fp16 tensor cores) skip the
  per-conv layout reorders (the largest single gain on CPU here).
* `fuse_conv_relu` (CPU): every plain conv goes through oneDNN's fused-post-op convolution
  (`torch.ops.mkldnn._convolution_pointwise`, the op torch.compile uses on CPU), with the ReLU
  that follows it fused in ResNet stems and bottlenecks and in the head. Bit-identical outputs
  here; a ResNet bottleneck ran ~25% faster in a micro-benchmark, and reordering each weight
  into oneDNN's layout once (not per call) gave ~7% end to end. Skipped where the op is missing.
"""
import logging
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import FrozenBatchNorm2d

__all__ = [
    "fold_batch_norm",
    "fuse_head_predictors",
    "FusedYolactHead",
    "fuse_conv_relu",
    "MkldnnConv2d",
    "to_channels_last",
    "optimize_for_inference",
]

logger = logging.getLogger(__name__)


def _norm_affine(norm: nn.Module):
    """(scale, shift) with norm(x) == x * scale + shift per channel, or None if not foldable."""
    if isinstance(norm, FrozenBatchNorm2d):
        pass
    elif isinstance(norm, nn.modules.batchnorm._BatchNorm):
        # Training-mode batch norm uses batch statistics: not an affine map of the conv output.
        if norm.training or not norm.track_running_stats or norm.running_var is None:
            return None
    else:
        return None
    scale = norm.running_var.double().add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    return scale, shift


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> int:
    """Fold every `conv.norm` batch norm into its conv, in place; returns how many were folded.

    Applies to modules with a 4-d `weight`, a `bias` attribute and a `norm` child (Detectron2's
    Conv2d, our ModulatedDeformConv2d): conv(x) * s + t == conv'(x) with w' = w * s, b' = b * s + t.
    Computed in float64, then cast back, so the folded conv differs only by float32 rounding.
    """
    folded = 0
    for module in model.modules():
        norm = getattr(module, "norm", None)
        weight = getattr(module, "weight", None)
        if norm is None or not isinstance(weight, torch.Tensor) or weight.dim() != 4 or not hasattr(module, "bias"):
            continue
        affine = _norm_affine(norm)
        if affine is None:
            continue
        scale, shift = affine
        bias = module.bias.double() if module.bias is not None else torch.zeros_like(scale)
        new_weight = (weight.double() * scale.view(-1, 1, 1, 1)).to(weight.dtype)
        new_bias = (bias * scale + shift).to(weight.dtype)
        module.weight = nn.Parameter(new_weight, requires_grad=False)
        module.bias = nn.Parameter(new_bias, requires_grad=False)
        module.norm = None
        folded += 1
    return folded


class FusedYolactHead(nn.Module):
    """Inference form of YolactHead: same outputs, the three prediction convs stacked into one."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.num_classes = head.num_classes
        self.num_anchors = head.num_anchors
        self.num_prototypes = head.num_prototypes
        self.upfeature = head.upfeature
        self.upfeature_has_relu = False  # set by fuse_conv_relu when the ReLU is fused into the conv
        parts = [head.bbox_pred, head.cls_score, head.coef_pred]
        self.splits = [int(c.out_channels) for c in parts]
        first = parts[0]
        self.predict = nn.Conv2d(
            first.in_channels, sum(self.splits), first.kernel_size, stride=first.stride, padding=first.padding
        ).to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            self.predict.weight.copy_(torch.cat([c.weight for c in parts]))
            self.predict.bias.copy_(torch.cat([c.bias for c in parts]))
        self.predict.requires_grad_(False)

    def forward(self, features: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        b = features[0].shape[0]
        lasts = (4, self.num_classes + 1, self.num_prototypes)
        outs: List[List[torch.Tensor]] = [[], [], []]
        for x in features:
            for conv in self.upfeature:
                x = conv(x) if self.upfeature_has_relu else F.relu(conv(x), inplace=True)
            y = self.predict(x).permute(0, 2, 3, 1)  # (B, H, W, A*(4 + C+1 + K)); contiguous if NHWC
            for i, part in enumerate(y.split(self.splits, dim=3)):
                outs[i].append(part.reshape(b, -1, lasts[i]))  # location-major, anchor-minor
        return {
            "loc": torch.cat(outs[0], dim=1),
            "conf": torch.cat(outs[1], dim=1),
            "coef": torch.tanh(torch.cat(outs[2], dim=1)),
        }


def fuse_head_predictors(model: nn.Module) -> bool:
    """Replace model.head (a YolactHead) by its FusedYolactHead, in place; False if not applicable."""
    from yolact_d2.modeling.head import YolactHead

    head = getattr(model, "head", None)
    if type(head) is not YolactHead:
        return False
    model.head = FusedYolactHead(head)
    return True


def _pointwise_op():
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class MkldnnConv2d(nn.Module):
    """Inference conv (+ optional ReLU) on oneDNN's fused-post-op convolution for float32 or
    bfloat16 CPU tensors whose dtype matches the weight's (bf16: `precision.cast_network`);
    F.conv2d (+ relu) for anything else (CUDA, other dtypes, tracing/export)."""

    def __init__(self, conv: nn.Module, relu: bool = False):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)
        self.dilation = list(conv.dilation)
        self.groups = int(conv.groups)
        self.relu = relu
        self._op = _pointwise_op()
        self._packed = None  # oneDNN-layout copy of the weight, made on the first CPU call

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (
            isinstance(conv, nn.Conv2d)
            and getattr(conv, "norm", None) is None
            and getattr(conv, "activation", None) is None
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
        )

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight reordered once into oneDNN's blocked layout (chosen for the first input's
        shape; other shapes still give the same results) instead of on every call."""
        if self._packed is None or self._packed.dtype != self.weight.dtype:  # (re)pack after a cast
            try:
                dense = self.weight.detach().contiguous().to_mkldnn()
                self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    dense, self.padding, self.stride, self.dilation, self.groups, list(x.shape)
                )
            except (RuntimeError, AttributeError, NotImplementedError):
                self._packed = self.weight  # reorder not available: oneDNN reorders per call
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self._op is not None
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16)
            and x.dtype == self.weight.dtype
            and not _exporting()
        ):
            attr = "relu" if self.relu else "none"
            weight = self._packed_weight(x)
            return self._op(x, weight, self.bias, self.padding, self.stride, self.dilation, self.groups, attr, [], "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu_(y) if self.relu else y


class _FusedStem(nn.Module):
    """Detectron2 BasicStem (conv1 -> relu -> 3x3/2 max pool) with the ReLU fused."""

    def __init__(self, stem: nn.Module):
        super().__init__()
        self.conv1 = MkldnnConv2d(stem.conv1, relu=True)
        self.out_channels, self.stride = stem.out_channels, stem.stride

    def forward(self, x):
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class _FusedBottleneck(nn.Module):
    """Detectron2 BottleneckBlock with conv1/conv2 ReLUs fused (same sum and final ReLU)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1 = MkldnnConv2d(block.conv1, relu=True)
        self.conv2 = MkldnnConv2d(block.conv2, relu=True)
        self.conv3 = MkldnnConv2d(block.conv3)
        self.shortcut = MkldnnConv2d(block.shortcut) if block.shortcut is not None else None
        self.in_channels, self.out_channels, self.stride = block.in_channels, block.out_channels, block.stride

    def forward(self, x):
        out = self.conv3(self.conv2(self.conv1(x)))
        out += self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out)


def fuse_conv_relu(model: nn.Module) -> int:
    """In place: ResNet stems/bottlenecks -> fused versions, every other plain conv -> MkldnnConv2d,
    the head's upfeature convs with their ReLU. Needs batch norms folded first. Returns the number
    of convs rewritten (0 where oneDNN's op is missing)."""
    from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock

    if _pointwise_op() is None:
        return 0
    count = 0

    def rewrite(parent: nn.Module) -> None:
        nonlocal count
        for name, child in list(parent.named_children()):
            if type(child) is BasicStem and MkldnnConv2d.supports(child.conv1):
                setattr(parent, name, _FusedStem(child))
                count += 1
            elif type(child) is BottleneckBlock and all(
                MkldnnConv2d.supports(c) for c in (child.conv1, child.conv2, child.conv3, child.shortcut) if c is not None
            ):
                setattr(parent, name, _FusedBottleneck(child))
                count += 3 + (child.shortcut is not None)
            elif isinstance(child, FusedYolactHead):
                child.upfeature = nn.ModuleList(
                    [MkldnnConv2d(c, relu=True) if MkldnnConv2d.supports(c) else c for c in child.upfeature]
                )
                child.upfeature_has_relu = all(isinstance(c, MkldnnConv2d) for c in child.upfeature)
                if MkldnnConv2d.supports(child.predict):
                    child.predict = MkldnnConv2d(child.predict)
                count += len(child.upfeature) + 1
            elif type(child) in (nn.Conv2d,) or (type(child).__name__ == "Conv2d" and MkldnnConv2d.supports(child)):
                if MkldnnConv2d.supports(child):
                    setattr(parent, name, MkldnnConv2d(child))
                    count += 1
            else:
                rewrite(child)

    rewrite(model)
    return count


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert 4-d parameters/buffers to channels_last (NHWC); activations follow the weights."""
    return model.to(memory_format=torch.channels_last)


def optimize_for_inference(model: nn.Module, channels_last: Optional[bool] = None) -> nn.Module:
    """Eval mode, fold batch norms, fuse the head's prediction convs, channels_last (default).

    In place (returns the same model). Only for inference: the folded model cannot be trained and
    its state dict has no norm keys any more, so save checkpoints from the original model.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n = fold_batch_norm(model)
    fused = fuse_head_predictors(model)
    if channels_last is None:
        channels_last = True
    if channels_last:
        to_channels_last(model)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    rewritten = fuse_conv_relu(model) if on_cpu else 0
    logger.info(
        "optimize_for_inference: folded %d batch norms, fused head convs=%s, channels_last=%s, "
        "%d convs on oneDNN fused post-ops",
        n,
        fused,
        channels_last,
        rewritten,
    )
    return model
