"""YOLACT's Fast NMS, mask crop and mask paste: torch-level wrappers, pure-PyTorch reference path,
backend report.

The compiled operators live in `yolact_d2._C` (csrc/*.cpp, *.cu) and are registered as
`torch.ops.yolact_d2.fast_nms` / `crop_masks` / `paste_masks` (CPU only). The wrappers here
validate arguments, then pick:
  * the pure-PyTorch path while exporting to ONNX (it is traceable, the custom op is not);
  * the compiled operator when `yolact_d2._C` is built and has a kernel for the tensor's device;
  * otherwise the pure-PyTorch path, with one warning that the extension is not built.

Numerical rules shared by every path (kernels and pure path give identical results):
  * IoU is computed in float32 for float16/bfloat16/float32 boxes, in float64 for float64 boxes:
        w = max(min(x2a, x2b) - max(x1a, x1b), 0), h likewise, inter = w * h,
        area = (x2 - x1) * (y2 - y1)  (as given, no clamping),
        union = (area_a + area_b) - inter,  IoU = inter / union if inter > 0 else 0.
    An inverted box (x2 < x1 or y2 < y1) or a zero-area box therefore has IoU 0 with every box:
    it never suppresses and is never suppressed. (inter > 0 implies both areas >= inter, so
    the union is positive whenever it is used.)
  * Sorting is stable: equal scores keep the lower prior index first (per class), and the final
    merge of all classes breaks equal scores by (class, rank within the class). NaN scores sort
    first, as torch.sort does.
  * Crop coordinates are computed in float32 (float64 for float64 boxes), no rounding.
"""
from __future__ import annotations

import operator
import warnings
from typing import Dict, Tuple

import torch

__all__ = [
    "fast_nms",
    "crop_masks",
    "paste_masks",
    "backend_info",
    "fast_nms_pytorch",
    "crop_masks_pytorch",
    "paste_masks_pytorch",
    "box_iou_matrix",
    "top_sorted",
    "suppressed_by_earlier",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

try:  # the compiled extension registers torch.ops.yolact_d2.* on import
    from yolact_d2 import _C  # noqa: F401

    _EXT_ERROR = None
except ImportError as e:  # not built (e.g. `pip install` without a compiler): pure path
    _C = None
    _EXT_ERROR = e

_OPS = ("fast_nms", "crop_masks", "paste_masks")
_warned_fallback = set()  # reasons already warned about ("not-built", "cuda")


def _query_kernels() -> Dict[Tuple[str, str], bool]:
    """{(op, device type): whether yolact_d2._C registered a kernel for it}, asked once."""
    found = {}
    for op in _OPS:
        for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA")):
            found[(op, device_type)] = _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
                f"yolact_d2::{op}", key
            )
    return found


# a plain dict (not a dispatcher query per call) so torch.compile can trace the wrappers
_KERNELS = _query_kernels()


def _ext_has(op_name: str, device_type: str) -> bool:
    """Whether the compiled extension has a kernel for `op_name` on `device_type` ("cpu"/"cuda")."""
    return _C is not None and _KERNELS.get((op_name, device_type), False)


def _warn_fallback_once(device_type: str) -> None:
    """One warning per process (and per device type) that the pure-PyTorch ops are in use."""
    if _C is None:
        key, reason = "not-built", (
            f"yolact_d2._C (the compiled Fast NMS / crop kernels) is not available ({_EXT_ERROR})"
        )
    else:
        key, reason = device_type, f"yolact_d2._C was built without {device_type} kernels"
    if key in _warned_fallback:
        return
    _warned_fallback.add(key)
    warnings.warn(
        f"{reason}; using the slower pure-PyTorch ops. Build it with "
        "`pip install --no-build-isolation -e .` in the repository (with nvcc and CUDA_HOME set for "
        "CUDA kernels).",
        RuntimeWarning,
        stacklevel=4,  # the user code calling fast_nms / crop_masks
    )


def backend_info() -> Dict[str, Dict[str, str]]:
    """Which implementation each op uses, per device type.

    Returns {"fast_nms": {"cpu": ..., "cuda": ...}, "crop_masks": {...}, "paste_masks": {...}} where
    each value is "cpu-kernel", "cuda-kernel" or "pytorch" (paste_masks has no CUDA kernel).
    """
    info = {}
    for op in _OPS:
        info[op] = {
            "cpu": "cpu-kernel" if _ext_has(op, "cpu") else "pytorch",
            "cuda": "cuda-kernel" if _ext_has(op, "cuda") else "pytorch",
        }
    return info


def _use_kernel(op_name: str, device: torch.device) -> bool:
    if torch.onnx.is_in_onnx_export():
        return False
    if _ext_has(op_name, device.type):
        return True
    if _C is None or device.type == "cuda":
        _warn_fallback_once(device.type)
    return False


# ----------------------------------------------------------------------------------------------
# argument checks (shared by all paths)
# ----------------------------------------------------------------------------------------------
def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype} "
            f"(shape {tuple(t.shape)})"
        )


def _check_int(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool ({value!r})")
    try:
        value = operator.index(value)  # int, numpy integers, 0-d integer tensors
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_nms_args(boxes, scores, iou_threshold, top_k, max_detections):
    _check_float("boxes", boxes)
    _check_float("scores", scores)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if scores.dim() != 2:
        raise ValueError(
            f"scores must have shape (C, N) (per-class scores, no background), got {tuple(scores.shape)}"
        )
    if scores.shape[1] != boxes.shape[0]:
        raise ValueError(
            f"scores must have shape (C, N) with N = boxes.shape[0] = {boxes.shape[0]}, "
            f"got scores of shape {tuple(scores.shape)}"
        )
    if boxes.device != scores.device:
        raise ValueError(f"boxes and scores must be on the same device, got {boxes.device} and {scores.device}")
    if isinstance(iou_threshold, torch.Tensor):
        iou_threshold = float(iou_threshold)
    if not isinstance(iou_threshold, (int, float)) or isinstance(iou_threshold, bool):
        raise TypeError(f"iou_threshold must be a float, got {type(iou_threshold).__name__}")
    if iou_threshold != iou_threshold:
        raise ValueError("iou_threshold must not be NaN")
    top_k = _check_int("top_k", top_k)
    max_detections = _check_int("max_detections", max_detections)
    return float(iou_threshold), top_k, max_detections


def _check_crop_args(masks, boxes, padding):
    _check_float("masks", masks)
    _check_float("boxes", boxes)
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(masks.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"boxes must have shape (N, 4) (x1, y1, x2, y2 normalised to [0, 1]), got {tuple(boxes.shape)}"
        )
    if boxes.shape[0] != masks.shape[0]:
        raise ValueError(
            f"boxes must have one row per mask: masks {tuple(masks.shape)} but boxes {tuple(boxes.shape)}"
        )
    if boxes.device != masks.device:
        raise ValueError(f"masks and boxes must be on the same device, got {masks.device} and {boxes.device}")
    return _check_int("padding", padding)


# ----------------------------------------------------------------------------------------------
# pure-PyTorch reference path
# ----------------------------------------------------------------------------------------------
def _opmath(t: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16/float32, float64 stays float64 (the coordinate precision rule)."""
    return t if t.dtype == torch.float64 else t.float()


def box_iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of (..., n, 4) and (..., m, 4) xyxy boxes -> (..., n, m), with the module's rules.

    Differs from detectron2's pairwise_iou only in the edge rules (inverted/zero-area boxes and a
    fixed operation order), which the compiled kernels reproduce bit for bit.
    """
    a = _opmath(a)
    b = _opmath(b)
    ax1, ay1, ax2, ay2 = a.unsqueeze(-2).unbind(-1)  # (..., n, 1)
    bx1, by1, bx2, by2 = b.unsqueeze(-3).unbind(-1)  # (..., 1, m)
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = w * h
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    union = (area_a + area_b) - inter
    positive = inter > 0
    return torch.where(positive, inter / torch.where(positive, union, torch.ones_like(union)), torch.zeros_like(inter))


def top_sorted(x: torch.Tensor, k: int, dim: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k largest along dim, sorted descending, equal values by lower index first."""
    if torch.onnx.is_in_onnx_export():
        # ONNX has no stable sort; its TopK orders equal values by lower index (the same rule)
        return torch.topk(x, k, dim=dim, largest=True, sorted=True)
    values, indices = torch.sort(x, dim=dim, descending=True, stable=True)
    return values.narrow(dim, 0, k), indices.narrow(dim, 0, k)


def suppressed_by_earlier(iou: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """(..., K, K) IoU of score-sorted boxes -> (..., K) bool keep: no earlier box has IoU > thr."""
    iou = torch.triu(iou, diagonal=1)  # only pairs (i < j): i scores higher than j
    if iou.shape[-1] == 0:
        return torch.ones(iou.shape[:-1], dtype=torch.bool, device=iou.device)
    iou_max = iou.max(dim=-2).values  # (..., K): per column j, max over earlier rows i
    return iou_max <= iou_threshold


def fast_nms_pytorch(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    max_detections: int = 100,
    class_agnostic: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-PyTorch Fast NMS (the reference for the compiled kernels). Same signature as fast_nms."""
    num_classes, n = scores.shape
    device = scores.device
    if class_agnostic:
        if num_classes == 0 or n == 0:
            return _empty_nms(scores)
        best, best_class = scores.max(dim=0)  # (N,), (N,): first max wins on ties
        k = min(top_k, n)
        order = top_sorted(best, k)[1]  # (K,)
        keep = suppressed_by_earlier(box_iou_matrix(boxes[order], boxes[order]), iou_threshold)
        order = order[keep][:max_detections]  # already sorted by score
        return order, best_class[order], best[order]

    k = min(top_k, n)
    if num_classes == 0 or k == 0:
        return _empty_nms(scores)
    sorted_scores, order = top_sorted(scores, k, dim=1)  # (C, K)
    cand = boxes[order.reshape(-1)].reshape(num_classes, k, 4)  # (C, K, 4)
    keep = suppressed_by_earlier(box_iou_matrix(cand, cand), iou_threshold)  # (C, K)
    classes = torch.arange(num_classes, device=device).unsqueeze(1).expand(num_classes, k)
    kept_scores = sorted_scores[keep]  # class-major, rank-minor order
    kept_idx = order[keep]
    kept_classes = classes[keep]
    final = top_sorted(kept_scores, min(max_detections, kept_scores.shape[0]))[1]
    return kept_idx[final], kept_classes[final], kept_scores[final]


def _empty_nms(scores):
    e = torch.zeros(0, dtype=torch.int64, device=scores.device)
    return e, e.clone(), scores.new_zeros(0)


def _crop_inside(masks: torch.Tensor, boxes: torch.Tensor, padding: int) -> torch.Tensor:
    """(N, H, W) bool: which pixels lie inside each padded box (official YOLACT crop rule)."""
    n, h, w = masks.shape
    b = _opmath(boxes)
    x1 = (torch.minimum(b[:, 0], b[:, 2]) * w - padding).clamp(min=0)
    x2 = (torch.maximum(b[:, 0], b[:, 2]) * w + padding).clamp(max=w)
    y1 = (torch.minimum(b[:, 1], b[:, 3]) * h - padding).clamp(min=0)
    y2 = (torch.maximum(b[:, 1], b[:, 3]) * h + padding).clamp(max=h)
    cols = torch.arange(w, device=masks.device, dtype=b.dtype)  # (W,)
    rows = torch.arange(h, device=masks.device, dtype=b.dtype)  # (H,)
    in_x = (cols >= x1[:, None]) & (cols < x2[:, None])  # (N, W)
    in_y = (rows >= y1[:, None]) & (rows < y2[:, None])  # (N, H)
    return in_y[:, :, None] & in_x[:, None, :]


def crop_masks_pytorch(masks: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """Pure-PyTorch crop (the reference for the compiled kernels); differentiable in masks."""
    inside = _crop_inside(masks, boxes.detach(), padding)
    # where (not the official multiply) so outside pixels are exactly +0.0 even for NaN/inf masks,
    # as the kernels write them; the gradient is the same: grad * inside.
    return torch.where(inside, masks, masks.new_zeros(()))


def _bilinear_taps(in_size: int, out_size: int, device) -> Tuple[torch.Tensor, ...]:
    """Source indices i0, i1 and weights w0, w1 of each output index, bit-identical to PyTorch's CPU
    bilinear kernel (align_corners=False): src = max(fma(in / out, dst + 0.5, -0.5), 0) in float32."""
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    # float64 product of float32 values is exact, so one rounding to float32 emulates the fma.
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5).double() * scale.double() - 0.5).float().clamp(min=0)
    i0 = src.long().clamp(max=in_size - 1)
    w1 = (src - i0).clamp(0, 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0.to(device), i1.to(device), (1 - w1).to(device), w1.to(device)


def _lerp(a: torch.Tensor, wa: torch.Tensor, b: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """a * wa + b * wb rounded like PyTorch's kernel, fma(a, wa, b * wb) (float64 emulation)."""
    return (a.double() * wa.double() + (b * wb).double()).float()


def paste_masks_pytorch(masks: torch.Tensor, output_size: Tuple[int, int], threshold: float) -> torch.Tensor:
    """Same result as upsampling every (cropped) mask to the full image with F.interpolate (bit for
    bit on this CPU build, which fuses multiply-adds), but each mask is only interpolated over the
    output window its non-zero prototype pixels reach; outside it the upsampled value is exactly 0
    (not > threshold). CPU speed-up: cropped masks only cover their box.

    masks: (D, Hp, Wp) probabilities (zero outside the crop) -> (D, height, width) bool; threshold >= 0.
    The reference for the compiled CPU kernel (csrc/paste_cpu.cpp), which is ~10x faster (no
    Python loop over detections).
    """
    height, width = output_size
    d, hp, wp = masks.shape
    masks = masks.float()
    if (hp, wp) == (height, width):  # F.interpolate copies at the same size
        return masks > threshold
    out = torch.zeros((d, height, width), dtype=torch.bool, device=masks.device)
    y0, y1, hy0, hy1 = _bilinear_taps(hp, height, masks.device)
    x0, x1, wx0, wx1 = _bilinear_taps(wp, width, masks.device)
    nonzero = masks != 0
    rows, cols = nonzero.any(dim=2), nonzero.any(dim=1)  # (D, Hp), (D, Wp)
    r_lo, r_hi = rows.int().argmax(dim=1), hp - 1 - rows.flip(1).int().argmax(dim=1)
    c_lo, c_hi = cols.int().argmax(dim=1), wp - 1 - cols.flip(1).int().argmax(dim=1)
    # Output pixels whose taps touch [lo, hi]: from the first with i1 >= lo to the last with i0 <= hi.
    ys, ye = torch.searchsorted(y1, r_lo), torch.searchsorted(y0, r_hi, right=True)
    xs, xe = torch.searchsorted(x1, c_lo), torch.searchsorted(x0, c_hi, right=True)
    windows = torch.stack([ys, ye, xs, xe], dim=1).tolist()
    y0_list, y1_list = y0.tolist(), y1.tolist()
    hy0, hy1 = hy0[:, None], hy1[:, None]
    for i, (has, (a, b, c, e)) in enumerate(zip(rows.any(dim=1).tolist(), windows)):
        if not has or a >= b or c >= e:
            continue
        top = y0_list[a]
        m = masks[i, top : y1_list[b - 1] + 1]  # only the prototype rows the window reads
        # Width first, then height: the order and rounding of PyTorch's bilinear kernel.
        tmp = _lerp(m.index_select(1, x0[c:e]), wx0[c:e], m.index_select(1, x1[c:e]), wx1[c:e])  # (rows, nx)
        val = _lerp(
            tmp.index_select(0, y0[a:b] - top), hy0[a:b], tmp.index_select(0, y1[a:b] - top), hy1[a:b]
        )  # (ny, nx)
        torch.gt(val, threshold, out=out[i, a:b, c:e])
    return out


# ----------------------------------------------------------------------------------------------
# public ops
# ----------------------------------------------------------------------------------------------
def fast_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    max_detections: int = 100,
    class_agnostic: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YOLACT Fast NMS.

    Args:
        boxes: (N, 4) xyxy boxes (any float dtype).
        scores: (C, N) per-class scores (no background column); the caller has already dropped
            priors whose best class score is below the confidence threshold.
        iou_threshold: a candidate is dropped when a higher-scoring candidate of its class
            (among the top_k) has IoU > iou_threshold with it, suppressed or not (Fast NMS).
        top_k: candidates per class (per image when class_agnostic).
        max_detections: maximum number of returned detections.
        class_agnostic: official cross-class NMS: each box competes once, with its best class.
    Returns:
        keep (D,) int64 indices into N, classes (D,) int64, scores (D,) in scores' dtype;
        sorted by score descending, D <= max_detections.
    """
    iou_threshold, top_k, max_detections = _check_nms_args(boxes, scores, iou_threshold, top_k, max_detections)
    class_agnostic = bool(class_agnostic)
    if _use_kernel("fast_nms", scores.device):
        return torch.ops.yolact_d2.fast_nms(boxes, scores, iou_threshold, top_k, max_detections, class_agnostic)
    return fast_nms_pytorch(boxes, scores, iou_threshold, top_k, max_detections, class_agnostic)


def crop_masks(masks: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """Zero each (H, W) mask outside its box (official YOLACT crop, with `padding` pixels).

    Args:
        masks: (N, H, W) float masks (any float dtype).
        boxes: (N, 4) xyxy boxes normalised to [0, 1] (x by W, y by H); corners may be swapped.
        padding: pixels added on each side before clamping to the image.
    Returns:
        (N, H, W) masks in masks' dtype, contiguous. Differentiable in masks (grad * inside);
        boxes get no gradient.
    """
    padding = _check_crop_args(masks, boxes, padding)
    if _use_kernel("crop_masks", masks.device):
        return torch.ops.yolact_d2.crop_masks(masks, boxes, padding)
    return crop_masks_pytorch(masks, boxes, padding)


def paste_masks(masks: torch.Tensor, output_size: Tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """Full-image masks: F.interpolate(masks[None], output_size, mode="bilinear",
    align_corners=False)[0] > threshold, bit for bit, computed only where each mask can be non-zero.

    Args:
        masks: (N, Hp, Wp) float32 probabilities, zero outside each detection's crop (crop_masks).
        output_size: (height, width) of the image.
        threshold: >= 0 (outside a mask's window the upsampled value is 0).
    Returns:
        (N, height, width) bool. The compiled kernel runs on CPU tensors; others take the pure path.
    """
    if not (isinstance(masks, torch.Tensor) and masks.dim() == 3 and masks.dtype == torch.float32):
        raise ValueError(
            f"paste_masks: masks must be a float32 (N, Hp, Wp) tensor, got "
            f"{getattr(masks, 'dtype', type(masks).__name__)} {tuple(getattr(masks, 'shape', ()))}"
        )
    height, width = int(output_size[0]), int(output_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"paste_masks: output_size must be positive, got {tuple(output_size)}")
    if not threshold >= 0:
        raise ValueError(f"paste_masks: threshold must be >= 0, got {threshold}")
    if masks.device.type == "cpu" and _use_kernel("paste_masks", masks.device):
        return torch.ops.yolact_d2.paste_masks(masks, height, width, float(threshold))
    return paste_masks_pytorch(masks, (height, width), threshold)


# ----------------------------------------------------------------------------------------------
# torch.library registrations of the compiled ops: fake (meta) kernels and crop's autograd
# ----------------------------------------------------------------------------------------------
if _C is not None:

    @torch.library.register_fake("yolact_d2::fast_nms")
    def _fast_nms_fake(boxes, scores, iou_threshold, top_k, max_detections, class_agnostic):
        ctx = torch.library.get_ctx()
        d = ctx.new_dynamic_size(max=max(max_detections, 0))
        idx = boxes.new_empty((d,), dtype=torch.int64)
        return idx, idx.new_empty((d,)), scores.new_empty((d,))

    @torch.library.register_fake("yolact_d2::paste_masks")
    def _paste_masks_fake(masks, height, width, threshold):
        return masks.new_empty((masks.shape[0], height, width), dtype=torch.bool)

    @torch.library.register_fake("yolact_d2::crop_masks")
    def _crop_masks_fake(masks, boxes, padding):
        return torch.empty_like(masks, memory_format=torch.contiguous_format)

    def _crop_setup_context(ctx, inputs, output):
        _, boxes, padding = inputs
        ctx.save_for_backward(boxes)
        ctx.padding = padding

    def _crop_backward(ctx, grad):
        (boxes,) = ctx.saved_tensors
        # crop is linear in masks: d(out)/d(masks) * grad = grad * inside = crop(grad)
        return torch.ops.yolact_d2.crop_masks(grad, boxes, ctx.padding), None, None

    torch.library.register_autograd("yolact_d2::crop_masks", _crop_backward, setup_context=_crop_setup_context)
