"""Numeric precision of inference: "fp32" (default), "bf16", "fp16", "int8" (CPU, ONNX Runtime).

Only the network (backbone, FPN, protonet, head; YolactEdge's flow net) runs at the lower
precision. Pre-processing (resize, normalise) and post-processing (softmax, box decoding, Fast
NMS, mask assembly, YOLACT++ mask re-scoring) stay float32, so thresholds and mask edges behave
as in the fp32 model.

How bf16 runs (chosen by measurement on this 2-core AVX512-BF16 CPU, R50-550 batch 1, see the
README): the network's weights are cast to bfloat16 once, stay channels_last, and go through the
same oneDNN fused conv(+ReLU) of `optimize.MkldnnConv2d` with bf16 weights packed once.
`torch.autocast("cpu", bfloat16)` was slower: it re-casts every fp32 weight on every call and
cannot use the packed oneDNN weights. fp16 (CUDA only) keeps the older autocast path.
int8 is not a rewrite of the torch model: the model is exported to ONNX and statically
quantized (per part) in yolact_d2.deploy.quantize, then runs in ONNX Runtime.
"""
import functools
from typing import FrozenSet, Optional

import torch
from torch import nn

from detectron2.structures import ImageList

__all__ = [
    "PRECISIONS",
    "PrecisionError",
    "PrecisionNotImplementedError",
    "apply_precision",
    "cpu_flags",
    "bf16_cpu_problem",
    "int8_problem",
    "check_precision",
    "cast_network",
]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# Parts of a Yolact model that are post-processing, not network: they keep float32.
_FP32_PARTS = ("post_processor", "mask_rescoring", "prior_generator", "criterion")
# Parts whose outputs feed post-processing: cast back to float32 as they come out.
_OUTPUT_PARTS = ("head", "protonet")


class PrecisionError(ValueError):
    """A precision that is unknown, or that this machine cannot run (the message names why)."""


class PrecisionNotImplementedError(PrecisionError, NotImplementedError):
    """A precision that yolact_d2 does not implement yet (none since int8 landed; kept for callers)."""


def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo names: avx512_bf16, amx_bf16, ...).

    Elsewhere (no /proc/cpuinfo) the flags torch's own CPU probes report, in the same names."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    found = {flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()}
    if "amx_tile" in found:
        found.add("amx_bf16")  # every AMX CPU so far has the bf16 tiles
    return frozenset(found)


def bf16_cpu_problem(flags: FrozenSet[str], mkldnn_available: bool) -> Optional[str]:
    """Why bf16 cannot run fast on this CPU (None: it can). bf16 without the instructions is
    emulated by torch and slower than fp32, so it is refused rather than silently slow."""
    if not mkldnn_available:
        return "this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)"
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return None
    has = "AVX512F present" if "avx512f" in flags else "no AVX512 at all"
    return (
        "this CPU has neither AVX512-BF16 (cpu flag avx512_bf16) nor AMX (amx_bf16) "
        f"({has}); bf16 would be emulated and slower than fp32"
    )


def int8_problem(device) -> Optional[str]:
    """Why int8 cannot run here (None: it can). int8 is ONNX Runtime static QDQ on the CPU
    (yolact_d2.deploy.quantize); its absence is a message, never an import error."""
    device = torch.device(device)
    if device.type != "cpu":
        return (
            f"int8 runs on the CPU (ONNX Runtime QDQ), not on '{device}'; use device='cpu', "
            "or 'fp16'/'bf16' on CUDA"
        )
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return f"it needs {', '.join(missing)} (pip install {' '.join(missing)})"
    return None


def check_precision(precision, device) -> str:
    """Validate `precision` for `device`; returns it. Errors name what is missing and what to do."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    if precision == "int8":
        problem = int8_problem(device)
        if problem is not None:
            raise PrecisionError(f"precision='int8': {problem}.")
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError(
            f"precision='fp16' needs a CUDA device (CPU float16 convs are slow and inexact); got device "
            f"'{device}'. On a CPU use 'bf16' (AVX512-BF16/AMX) or 'fp32'."
        )
    if precision == "bf16":
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise PrecisionError(f"precision='bf16' on '{device}': CUDA is not available here; use device 'cpu'.")
            if not torch.cuda.is_bf16_supported():
                raise PrecisionError(
                    f"precision='bf16': the GPU on '{device}' does not support bfloat16 "
                    "(needs compute capability >= 8.0); use 'fp16' or 'fp32'."
                )
        elif device.type == "cpu":
            problem = bf16_cpu_problem(cpu_flags(), torch.backends.mkldnn.is_available())
            if problem is not None:
                raise PrecisionError(f"precision='bf16' on the CPU: {problem}. Use precision='fp32'.")
        else:
            raise PrecisionError(f"precision='bf16' is supported on 'cpu' and 'cuda' devices, not '{device}'.")
    return precision


def _to_float(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return type(out)((k, _to_float(v)) for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(v) for v in out)
    return out


def _cast_images(preprocess, dtype):
    """Wrap a model's bound preprocess_image: the normalised batch leaves it in `dtype`."""

    @functools.wraps(preprocess)
    def wrapped(*args, **kwargs):
        images = preprocess(*args, **kwargs)
        return ImageList(images.tensor.to(dtype), images.image_sizes)

    return wrapped


def cast_network(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """In place: the network parts of a Yolact model in `dtype`, its pre/post-processing float32.

    The model's own buffers (pixel mean/std) and the parts in _FP32_PARTS keep float32; the
    normalised image is cast to `dtype` as it leaves `preprocess_image` (so YolactEdge's keyframe
    and warped paths, which both start there, are covered); the head's and protonet's outputs are
    cast back to float32 before decoding. Call after `optimize_for_inference` (the oneDNN convs
    pack their weights on first use, in the weights' dtype).
    """
    missing = [name for name in ("preprocess_image",) + _OUTPUT_PARTS if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"cast_network: {type(model).__name__} has no {', '.join(missing)}; it expects a Yolact model "
            "(yolact_d2.modeling.Yolact or a subclass)."
        )
    for name, child in model.named_children():
        if name not in _FP32_PARTS:
            child.to(dtype)
    for name in _OUTPUT_PARTS:
        getattr(model, name).register_forward_hook(lambda module, args, out: _to_float(out))
    model.preprocess_image = _cast_images(model.preprocess_image, dtype)
    return model



def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """In place, after `optimize_for_inference`: what `precision` changes in the model itself
    (bf16: `cast_network`). fp32 changes nothing; fp16 is float16 autocast at call time."""
    if precision == "bf16":
        cast_network(model, torch.bfloat16)
    return model
