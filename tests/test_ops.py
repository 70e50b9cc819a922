"""Fast NMS and mask crop: compiled kernels vs the pure-PyTorch path vs brute-force Python loops.

The brute-force oracles below are plain loops over numpy float32/float64 scalars that follow the
rules documented in yolact_d2/layers/ops.py; they share no code with either implementation.
"""
import math
import warnings

import numpy as np
import pytest
import torch

from yolact_d2.layers import backend_info, crop_masks, crop_masks_pytorch, fast_nms, fast_nms_pytorch
from yolact_d2.layers import ops

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


# ----------------------------------------------------------------------------------------------
# independent oracles
# ----------------------------------------------------------------------------------------------
def _np_type(dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def brute_iou(a, b, f):
    """IoU of two boxes (lists) in numpy scalar type f, with the documented edge rules."""
    a = [f(v) for v in a]
    b = [f(v) for v in b]
    w = max(min(a[2], b[2]) - max(a[0], b[0]), f(0))
    h = max(min(a[3], b[3]) - max(a[1], b[1]), f(0))
    inter = f(w * h)
    if not inter > 0:
        return f(0)
    area_a = f((a[2] - a[0]) * (a[3] - a[1]))
    area_b = f((b[2] - b[0]) * (b[3] - b[1]))
    return f(inter / f(f(area_a + area_b) - inter))


def brute_fast_nms(boxes, scores, thr, top_k, max_det, class_agnostic=False):
    """Fast NMS by loops: returns lists (keep, classes, scores as float)."""
    f = _np_type(boxes.dtype)
    thr = f(thr)
    bl = boxes.double().tolist()
    sl = scores.float().tolist() if scores.dtype != torch.float64 else scores.tolist()
    num_classes = len(sl)
    n = len(bl)

    def suppressed_ranks(order):
        kept = []
        for j in range(len(order)):
            if all(brute_iou(bl[order[i]], bl[order[j]], f) <= thr for i in range(j)):
                kept.append(j)
        return kept

    if class_agnostic:
        if num_classes == 0 or n == 0:
            return [], [], []
        best, best_c = [], []
        for i in range(n):
            col = [sl[c][i] for c in range(num_classes)]
            m = max(col)
            best.append(m)
            best_c.append(col.index(m))  # first max
        order = sorted(range(n), key=lambda i: (-best[i], i))[:top_k]
        kept = [order[j] for j in suppressed_ranks(order)][:max_det]
        return kept, [best_c[i] for i in kept], [best[i] for i in kept]

    found = []  # (score, class, rank, index)
    for c in range(num_classes):
        order = sorted(range(n), key=lambda i: (-sl[c][i], i))[:top_k]
        for j in suppressed_ranks(order):
            found.append((sl[c][order[j]], c, j, order[j]))
    found.sort(key=lambda t: (-t[0], t[1], t[2]))
    found = found[:max_det]
    return [t[3] for t in found], [t[1] for t in found], [t[0] for t in found]


def brute_crop(masks, boxes, padding):
    """Crop by loops: x1 = max(min(bx1, bx2) * W - padding, 0), x2 = min(max(..) * W + padding, W)."""
    f = _np_type(boxes.dtype)
    out = torch.zeros_like(masks)
    n, h, w = masks.shape
    for i in range(n):
        bx1, by1, bx2, by2 = [f(v) for v in boxes[i].double().tolist()]
        x1 = max(f(min(bx1, bx2) * f(w)) - f(padding), f(0))
        x2 = min(f(max(bx1, bx2) * f(w)) + f(padding), f(w))
        y1 = max(f(min(by1, by2) * f(h)) - f(padding), f(0))
        y2 = min(f(max(by1, by2) * f(h)) + f(padding), f(h))
        for r in range(h):
            if not (y1 <= r < y2):
                continue
            for c in range(w):
                if x1 <= c < x2:
                    out[i, r, c] = masks[i, r, c]
    return out


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def random_boxes(n, generator, scale=100.0, spread=0.4):
    xy = torch.rand(n, 2, generator=generator) * scale
    wh = torch.rand(n, 2, generator=generator) * scale * spread
    return torch.cat([xy, xy + wh], dim=1)


def random_scores(c, n, generator, levels=None):
    s = torch.rand(c, n, generator=generator)
    if levels:  # quantised: many exact ties
        s = (s * levels).floor() / levels
    return s


def assert_nms_equal(result, expected, msg=""):
    keep, classes, scores = result
    ekeep, eclasses, escores = expected
    assert keep.dtype == torch.int64 and classes.dtype == torch.int64, msg
    assert keep.tolist() == list(ekeep), f"{msg}: keep {keep.tolist()} != {list(ekeep)}"
    assert classes.tolist() == list(eclasses), f"{msg}: classes differ"
    got = scores.double().tolist()
    want = [float(s) for s in (escores.double().tolist() if torch.is_tensor(escores) else escores)]
    assert got == want, f"{msg}: scores differ"


def check_nms_all_paths(boxes, scores, thr=0.5, top_k=200, max_det=100, agnostic=False, brute=True):
    """kernel (wrapper) == pure path (== brute force); returns the kernel result."""
    res = fast_nms(boxes, scores, thr, top_k, max_det, agnostic)
    ref = fast_nms_pytorch(boxes, scores, thr, top_k, max_det, agnostic)
    assert res[2].dtype == scores.dtype
    assert_nms_equal(res, ref, "kernel vs pure path")
    if brute:
        assert_nms_equal(res, brute_fast_nms(boxes, scores, thr, top_k, max_det, agnostic), "kernel vs brute force")
    return res


# ----------------------------------------------------------------------------------------------
# backend
# ----------------------------------------------------------------------------------------------
def test_compiled_cpu_kernels_are_in_use():
    info = backend_info()
    assert ops._C is not None, (
        f"yolact_d2._C is not built ({ops._EXT_ERROR}); build it with "
        "`pip install --no-build-isolation -e .` so the CPU kernels are used"
    )
    assert info["fast_nms"]["cpu"] == "cpu-kernel", info
    assert info["crop_masks"]["cpu"] == "cpu-kernel", info
    assert info["paste_masks"]["cpu"] == "cpu-kernel", info
    assert set(info["fast_nms"].values()) <= {"cpu-kernel", "cuda-kernel", "pytorch"}


@needs_cuda
def test_compiled_cuda_kernels_are_in_use():
    info = backend_info()
    assert info["fast_nms"]["cuda"] == "cuda-kernel", info
    assert info["crop_masks"]["cuda"] == "cuda-kernel", info


def test_fallback_warns_once_and_matches(monkeypatch):
    monkeypatch.setattr(ops, "_C", None)
    monkeypatch.setattr(ops, "_EXT_ERROR", ImportError("simulated: not built"))
    monkeypatch.setattr(ops, "_warned_fallback", set())
    assert backend_info() == {
        "fast_nms": {"cpu": "pytorch", "cuda": "pytorch"},
        "crop_masks": {"cpu": "pytorch", "cuda": "pytorch"},
        "paste_masks": {"cpu": "pytorch", "cuda": "pytorch"},
    }
    g = torch.Generator().manual_seed(0)
    boxes, scores = random_boxes(30, g), random_scores(3, 30, g)
    with pytest.warns(RuntimeWarning, match="yolact_d2._C .*not available.*pip install"):
        res = fast_nms(boxes, scores)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        crop_masks(torch.rand(2, 4, 4), torch.rand(2, 4))
    assert_nms_equal(res, fast_nms_pytorch(boxes, scores))


# ----------------------------------------------------------------------------------------------
# Fast NMS
# ----------------------------------------------------------------------------------------------
def test_fast_nms_hand_computed():
    # box 1 overlaps box 0 with IoU 81/119 = 0.68 > 0.5; box 2 is far; class 1 ranks box 1 first.
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.8, 0.3], [0.1, 0.7, 0.2]])
    keep, classes, sc = check_nms_all_paths(boxes, scores)
    # class 0: 0 kept, 1 suppressed by 0, 2 kept; class 1: 1 kept, 2 kept, 0 suppressed by 1
    assert keep.tolist() == [0, 1, 2, 2] and classes.tolist() == [0, 1, 0, 1]
    assert torch.allclose(sc, torch.tensor([0.9, 0.7, 0.3, 0.2]))
    # Fast NMS (unlike standard NMS) lets a suppressed box suppress: chain 0 -> 1 -> 2
    chain = torch.tensor([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], dtype=torch.float32)
    keep, _, _ = check_nms_all_paths(chain, torch.tensor([[0.9, 0.8, 0.7]]), thr=0.4)
    assert keep.tolist() == [0]  # standard NMS would keep [0, 2] (IoU(0, 2) = 2/18)
    # class-agnostic: each box once, with its best class
    keep, classes, sc = check_nms_all_paths(boxes, scores, agnostic=True)
    assert keep.tolist() == [0, 2] and classes.tolist() == [0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("agnostic", [False, True])
def test_fast_nms_random_vs_pure_and_brute(dtype, agnostic):
    g = torch.Generator().manual_seed(1)
    for trial in range(4):
        n, c = [(60, 4), (150, 3), (7, 6), (90, 1)][trial]
        boxes = random_boxes(n, g).to(dtype)
        scores = random_scores(c, n, g, levels=20 if trial % 2 else None).to(dtype)
        for thr, top_k, max_det in [(0.5, 40, 30), (0.3, 200, 100), (0.7, 5, 3)]:
            check_nms_all_paths(boxes, scores, thr, top_k, max_det, agnostic)


@pytest.mark.parametrize("agnostic", [False, True])
def test_fast_nms_empty_and_degenerate_sizes(agnostic):
    g = torch.Generator().manual_seed(2)
    boxes, scores = random_boxes(10, g), random_scores(3, 10, g)
    cases = [
        (boxes[:0], scores[:, :0], 200, 100),  # N = 0
        (boxes, scores[:0], 200, 100),  # C = 0
        (boxes, scores, 0, 100),  # top_k = 0
        (boxes, scores, 200, 0),  # max_detections = 0
        (boxes[:1], scores[:, :1], 200, 100),  # one box
        (boxes, scores, 1, 100),  # top_k = 1
    ]
    for b, s, top_k, max_det in cases:
        keep, classes, sc = check_nms_all_paths(b, s, 0.5, top_k, max_det, agnostic)
        assert keep.shape == classes.shape == sc.shape and keep.dim() == 1
    keep, _, _ = fast_nms(boxes[:1], scores[:, :1], class_agnostic=agnostic)
    assert keep.tolist() == ([0] if agnostic else [0, 0, 0])


def test_fast_nms_ties_lower_index_first():
    # identical boxes and scores: the lowest index survives in each class; final ties by class
    boxes = torch.tensor([[0, 0, 10, 10]] * 4 + [[20, 20, 30, 30]] * 2, dtype=torch.float32)
    scores = torch.full((3, 6), 0.5)
    keep, classes, _ = check_nms_all_paths(boxes, scores)
    assert keep.tolist() == [0, 4, 0, 4, 0, 4] and classes.tolist() == [0, 0, 1, 1, 2, 2]
    keep, classes, _ = check_nms_all_paths(boxes, scores, agnostic=True)
    assert keep.tolist() == [0, 4] and classes.tolist() == [0, 0]
    # top_k cut inside a tie keeps the lower indices
    far = torch.arange(6, dtype=torch.float32)[:, None] * 100 + torch.tensor([0.0, 0, 10, 10])
    keep, _, _ = check_nms_all_paths(far, torch.full((1, 6), 0.5), top_k=3)
    assert keep.tolist() == [0, 1, 2]


def test_fast_nms_zero_area_inverted_and_outside_boxes():
    boxes = torch.tensor(
        [
            [10, 10, 0, 0],  # inverted (x2 < x1, y2 < y1): negative extents, IoU 0 with everything
            [0, 0, 10, 10],
            [5, 5, 5, 15],  # zero width
            [1, 1, 9, 9],  # overlaps box 1 (IoU 0.64)
            [-50, -50, -40, -40],  # outside the image
            [-49, -49, -40, -40],  # overlaps box 4
            [1e4, 1e4, 1e4 + 10, 1e4 + 10],
            [10, 0, 0, 10],  # inverted in x only
        ],
        dtype=torch.float32,
    )
    scores = torch.tensor([[0.99, 0.9, 0.95, 0.8, 0.7, 0.6, 0.5, 0.97]])
    keep, _, _ = check_nms_all_paths(boxes, scores)
    assert sorted(keep.tolist()) == [0, 1, 2, 4, 6, 7]  # 3 suppressed by 1, 5 by 4
    g = torch.Generator().manual_seed(3)
    wild = torch.rand(300, 4, generator=g) * 2000 - 500  # random corners: ~3/4 inverted somewhere
    wild[::7, 2] = wild[::7, 0]  # zero width
    for agnostic in (False, True):
        check_nms_all_paths(wild, random_scores(3, 300, g), 0.3, 100, 100, agnostic)


def test_fast_nms_non_contiguous_inputs():
    g = torch.Generator().manual_seed(4)
    boxes = random_boxes(80, g)
    scores = random_scores(5, 80, g)
    padded = torch.zeros(80, 8)
    padded[:, ::2] = boxes  # (N, 4) with stride 2
    scores_t = scores.t().contiguous().t()  # (C, N) in column-major memory (as conf.t() gives)
    assert not padded[:, ::2].is_contiguous() and not scores_t.is_contiguous()
    for agnostic in (False, True):
        res = check_nms_all_paths(padded[:, ::2], scores_t, agnostic=agnostic)
        assert_nms_equal(res, fast_nms(boxes, scores, class_agnostic=agnostic))


def test_fast_nms_mixed_dtypes_and_bfloat16():
    g = torch.Generator().manual_seed(5)
    boxes, scores = random_boxes(100, g), random_scores(4, 100, g)
    check_nms_all_paths(boxes.half(), scores, brute=False)
    check_nms_all_paths(boxes, scores.half(), brute=False)
    check_nms_all_paths(boxes.bfloat16(), scores.bfloat16(), brute=False)


def test_fast_nms_large_20k_boxes_80_classes():
    g = torch.Generator().manual_seed(6)
    n, c = 20000, 80
    boxes = random_boxes(n, g, scale=550.0, spread=0.3)
    scores = torch.softmax(torch.randn(c, n, generator=g) * 3, dim=0)
    for agnostic in (False, True):
        res = check_nms_all_paths(boxes, scores, 0.5, 200, 100, agnostic, brute=False)
        assert len(res[0]) == 100
    # the brute-force oracle on 3 of the classes (a full Python sort of 20k per class)
    sub = scores[:3]
    assert_nms_equal(fast_nms(boxes, sub, 0.5, 200, 100), brute_fast_nms(boxes, sub, 0.5, 200, 100))


def test_fast_nms_bad_arguments():
    boxes, scores = torch.rand(5, 4), torch.rand(3, 5)
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\).*\(5, 3\)"):
        fast_nms(boxes[:, :3], scores)
    with pytest.raises(ValueError, match=r"scores must have shape \(C, N\).*\(5,\)"):
        fast_nms(boxes, scores[0])
    with pytest.raises(ValueError, match=r"N = boxes.shape\[0\] = 5.*\(3, 4\)"):
        fast_nms(boxes, scores[:, :4])
    with pytest.raises(TypeError, match="scores must be float16.*torch.int64"):
        fast_nms(boxes, scores.long())
    with pytest.raises(TypeError, match="boxes must be float16.*torch.int32"):
        fast_nms(boxes.int(), scores)
    with pytest.raises(ValueError, match="top_k must be >= 0, got -1"):
        fast_nms(boxes, scores, top_k=-1)
    with pytest.raises(ValueError, match="max_detections must be >= 0, got -5"):
        fast_nms(boxes, scores, max_detections=-5)
    with pytest.raises(TypeError, match="top_k must be an int"):
        fast_nms(boxes, scores, top_k=2.5)
    assert_nms_equal(fast_nms(boxes, scores, top_k=np.int64(3)), fast_nms(boxes, scores, top_k=3))
    with pytest.raises(ValueError, match="iou_threshold must not be NaN"):
        fast_nms(boxes, scores, iou_threshold=float("nan"))
    with pytest.raises(ValueError, match="same device.*cpu.*meta"):
        fast_nms(boxes, scores.to("meta"))
    # direct operator calls are checked in C++ too
    with pytest.raises(RuntimeError, match="top_k must be >= 0"):
        torch.ops.yolact_d2.fast_nms(boxes, scores, 0.5, -1, 100, False)
    with pytest.raises(RuntimeError, match=r"scores must have shape \(C, N\) with N = 5"):
        torch.ops.yolact_d2.fast_nms(boxes, scores[:, :2], 0.5, 10, 100, False)


# ----------------------------------------------------------------------------------------------
# crop
# ----------------------------------------------------------------------------------------------
def same(a, b):
    """Bitwise-equal values (NaN equals NaN; +0.0 equals -0.0)."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def check_crop_all_paths(masks, boxes, padding=1, brute=True):
    out = crop_masks(masks, boxes, padding)
    ref = crop_masks_pytorch(masks, boxes, padding)
    assert out.dtype == masks.dtype and out.shape == masks.shape
    assert same(out, ref), "kernel vs pure path"
    if brute:
        assert same(out, brute_crop(masks, boxes, padding)), "kernel vs brute force"
    return out


def test_crop_hand_computed():
    masks = torch.ones(2, 5, 6)
    # mask 0: x in [0.2*6-1, 0.5*6+1) = [0.2, 4) -> cols 1..3; y in [0.2*5-1, 0.6*5+1) = [0, 4) -> rows 0..3
    # mask 1: swapped corners, padding takes it past the image: everything kept
    boxes = torch.tensor([[0.2, 0.2, 0.5, 0.6], [0.9, 0.9, 0.1, 0.1]])
    out = check_crop_all_paths(masks, boxes)
    expected0 = torch.zeros(5, 6)
    expected0[0:4, 1:4] = 1
    assert torch.equal(out[0], expected0) and torch.equal(out[1], masks[1])
    # padding 0 and a box exactly on pixel edges: x in [1.5, 3) -> cols 2; y in [0, 2.5) -> rows 0..2
    out = check_crop_all_paths(torch.ones(1, 5, 6), torch.tensor([[0.25, 0.0, 0.5, 0.5]]), padding=0)
    expected = torch.zeros(5, 6)
    expected[0:3, 2:3] = 1
    assert torch.equal(out[0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bfloat16])
def test_crop_random_vs_pure_and_brute(dtype):
    g = torch.Generator().manual_seed(7)
    masks = torch.randn(9, 13, 17, generator=g).to(dtype)
    boxes = (torch.rand(9, 4, generator=g) * 1.6 - 0.3).to(dtype)  # outside [0, 1], swapped corners
    boxes[0] = torch.tensor([0.3, 0.3, 0.3, 0.3])  # zero area: only the padding band survives
    boxes[1] = torch.tensor([1.5, 1.5, 2.0, 2.0])  # entirely outside: all zero
    boxes[2] = torch.tensor([-2.0, -1.0, -0.5, -0.2])
    for padding in (0, 1, 3):
        out = check_crop_all_paths(masks, boxes, padding)
        assert out[1].abs().sum() == 0 and out[2].abs().sum() == 0
    assert check_crop_all_paths(masks, boxes, 0)[0].abs().sum() == 0


def test_crop_edge_shapes_and_layouts():
    g = torch.Generator().manual_seed(8)
    check_crop_all_paths(torch.rand(0, 5, 5), torch.rand(0, 4))  # N = 0
    check_crop_all_paths(torch.rand(3, 0, 5), torch.rand(3, 4))  # H = 0
    check_crop_all_paths(torch.rand(1, 1, 1), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))  # one pixel
    # official layout (H, W, N) permuted to (N, H, W): non-contiguous input, contiguous output
    hwn = torch.randn(11, 7, 5, generator=g)
    masks = hwn.permute(2, 0, 1)
    boxes = torch.rand(5, 4, generator=g)
    out = check_crop_all_paths(masks, boxes[:, [0, 1, 2, 3]].t().contiguous().t())
    assert out.is_contiguous()
    # mixed dtypes: fp16 masks with fp32 boxes (coordinates in float32), fp32 masks with fp64 boxes
    check_crop_all_paths(torch.randn(3, 9, 10, generator=g).half(), torch.rand(3, 4, generator=g))
    check_crop_all_paths(torch.randn(3, 9, 10, generator=g), torch.rand(3, 4, generator=g).double())
    # NaN / inf pixels outside the box become exact zeros in every path
    m = torch.full((1, 4, 4), float("nan"))
    out = check_crop_all_paths(m, torch.tensor([[0.0, 0.0, 0.25, 0.25]]), padding=0)
    assert out[0, 0, 0].isnan() and (out.isnan().sum() == 1)


def test_crop_large_resolutions_vs_pure():
    g = torch.Generator().manual_seed(9)
    boxes = torch.rand(20, 4, generator=g)
    for size in (138, 550):
        masks = torch.rand(20, size, size, generator=g)
        check_crop_all_paths(masks, boxes, brute=False)


def test_crop_gradient():
    g = torch.Generator().manual_seed(10)
    masks = torch.randn(3, 6, 7, dtype=torch.float64, generator=g, requires_grad=True)
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.7], [0.8, 0.9, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m: crop_masks(m, boxes), (masks,))
    assert torch.autograd.gradgradcheck(lambda m: crop_masks(m, boxes), (masks,))
    # gradient equals autograd of the pure path (= upstream grad * inside), float32 too
    for dtype in (torch.float64, torch.float32):
        m1 = masks.detach().to(dtype).requires_grad_()
        m2 = masks.detach().to(dtype).requires_grad_()
        up = torch.randn(3, 6, 7, dtype=dtype, generator=g)
        (crop_masks(m1, boxes.to(dtype)) * up).sum().backward()
        (crop_masks_pytorch(m2, boxes.to(dtype)) * up).sum().backward()
        assert torch.equal(m1.grad, m2.grad)
    # boxes get no gradient
    b = boxes.clone().requires_grad_()
    out = crop_masks(masks, b)
    out.sum().backward()
    assert b.grad is None


def test_crop_bad_arguments():
    masks, boxes = torch.rand(2, 5, 5), torch.rand(2, 4)
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\), got \(5, 5\)"):
        crop_masks(masks[0], boxes)
    with pytest.raises(ValueError, match=r"one row per mask: masks \(2, 5, 5\) but boxes \(3, 4\)"):
        crop_masks(masks, torch.rand(3, 4))
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\).*\(2, 5\)"):
        crop_masks(masks, torch.rand(2, 5))
    with pytest.raises(TypeError, match="masks must be float16.*torch.uint8"):
        crop_masks(masks.byte(), boxes)
    with pytest.raises(ValueError, match="padding must be >= 0, got -1"):
        crop_masks(masks, boxes, padding=-1)
    with pytest.raises(ValueError, match="same device"):
        crop_masks(masks, boxes.to("meta"))
    with pytest.raises(RuntimeError, match="padding must be >= 0"):
        torch.ops.yolact_d2.crop_masks(masks, boxes, -1)


# ----------------------------------------------------------------------------------------------
# torch.compile and ONNX
# ----------------------------------------------------------------------------------------------
def _postprocess(boxes, scores, masks, mask_boxes):
    keep, classes, sc = fast_nms(boxes, scores, 0.5, 50, 20)
    return keep, classes, sc, crop_masks(masks, mask_boxes)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(11)
    boxes, scores = random_boxes(120, g), random_scores(4, 120, g)
    masks, mask_boxes = torch.rand(5, 12, 12, generator=g), torch.rand(5, 4, generator=g)
    compiled = torch.compile(_postprocess, fullgraph=True, backend="aot_eager")
    got = compiled(boxes, scores, masks, mask_boxes)
    want = _postprocess(boxes, scores, masks, mask_boxes)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # autograd through the compiled crop
    m = masks.clone().requires_grad_()
    crop_c = torch.compile(lambda x: crop_masks(x, mask_boxes).square().sum(), fullgraph=True, backend="aot_eager")
    crop_c(m).backward()
    assert torch.equal(m.grad, 2 * crop_masks_pytorch(masks, mask_boxes))


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    class Post(torch.nn.Module):
        def forward(self, boxes, scores, masks, mask_boxes):
            return _postprocess(boxes, scores, masks, mask_boxes)

    g = torch.Generator().manual_seed(12)
    # quantised scores: ties, which ONNX TopK must order as our stable sort (lower index first)
    inputs = (random_boxes(60, g), random_scores(3, 60, g, levels=8), torch.rand(4, 10, 12, generator=g),
              torch.rand(4, 4, generator=g))
    path = str(tmp_path / "post.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Post(), inputs, path, dynamo=True, verbose=False)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
    got = sess.run(None, feeds)
    want = _postprocess(*inputs)
    assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    np.testing.assert_array_equal(got[2], want[2].numpy())
    np.testing.assert_array_equal(got[3], want[3].numpy())


# ----------------------------------------------------------------------------------------------
# CUDA (run on a GPU machine)
# ----------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_cuda_fast_nms_vs_cpu_and_pure(dtype):
    g = torch.Generator().manual_seed(13)
    for n, c, levels in [(500, 5, None), (300, 3, 10), (20000, 80, None), (1, 2, None), (0, 3, None)]:
        boxes = random_boxes(n, g, scale=550.0, spread=0.3).to(dtype)
        scores = (torch.softmax(torch.randn(c, n, generator=g) * 3, dim=0) if levels is None
                  else random_scores(c, n, g, levels)).to(dtype)
        for agnostic in (False, True):
            for top_k in (200, 600):  # 600: more candidates than one block's tile
                res = fast_nms(boxes.cuda(), scores.cuda(), 0.5, top_k, 100, agnostic)
                assert res[0].is_cuda
                cpu = tuple(t.cpu() for t in res)
                assert_nms_equal(cpu, fast_nms(boxes, scores, 0.5, top_k, 100, agnostic), "cuda vs cpu kernel")
                pure = fast_nms_pytorch(boxes.cuda(), scores.cuda(), 0.5, top_k, 100, agnostic)
                assert_nms_equal(cpu, tuple(t.cpu() for t in pure), "cuda kernel vs cuda pure path")


@needs_cuda
def test_cuda_fast_nms_edge_boxes_and_brute():
    boxes = torch.tensor([[10, 10, 0, 0], [0, 0, 10, 10], [5, 5, 5, 15], [1, 1, 9, 9], [-50, -50, -40, -40],
                          [-49, -49, -40, -40], [10, 0, 0, 10]], dtype=torch.float32)
    scores = torch.tensor([[0.99, 0.9, 0.95, 0.8, 0.7, 0.6, 0.97], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    for agnostic in (False, True):
        res = tuple(t.cpu() for t in fast_nms(boxes.cuda(), scores.cuda(), class_agnostic=agnostic))
        assert_nms_equal(res, brute_fast_nms(boxes, scores, 0.5, 200, 100, agnostic))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bfloat16])
def test_cuda_crop_vs_cpu_and_brute(dtype):
    g = torch.Generator().manual_seed(14)
    masks = torch.randn(6, 13, 300, generator=g).to(dtype)  # W > 256 threads: grid-stride columns
    boxes = (torch.rand(6, 4, generator=g) * 1.6 - 0.3)
    boxes[0] = 0.3
    for padding in (0, 1):
        out = crop_masks(masks.cuda(), boxes.cuda(), padding).cpu()
        assert torch.equal(out, crop_masks(masks, boxes, padding))
        assert torch.equal(out, crop_masks_pytorch(masks.cuda(), boxes.cuda(), padding).cpu())
    small = masks[:3, :5, :7]
    assert torch.equal(crop_masks(small.cuda(), boxes[:3].cuda()).cpu(), brute_crop(small, boxes[:3], 1))
    hwn = torch.randn(138, 138, 100, generator=g).cuda()
    b = torch.rand(100, 4, generator=g).cuda()
    assert torch.equal(crop_masks(hwn.permute(2, 0, 1), b), crop_masks_pytorch(hwn.permute(2, 0, 1), b))
    assert crop_masks(torch.rand(0, 5, 5).cuda(), torch.rand(0, 4).cuda()).shape == (0, 5, 5)


@needs_cuda
def test_cuda_crop_gradient():
    g = torch.Generator().manual_seed(15)
    masks = torch.randn(3, 6, 7, dtype=torch.float64, generator=g).cuda().requires_grad_()
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.7], [0.8, 0.9, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64).cuda()
    assert torch.autograd.gradcheck(lambda m: crop_masks(m, boxes), (masks,))
    m2 = masks.detach().clone().requires_grad_()
    up = torch.randn(3, 6, 7, dtype=torch.float64, generator=g).cuda()
    (crop_masks(masks, boxes) * up).sum().backward()
    (crop_masks_pytorch(m2, boxes) * up).sum().backward()
    assert torch.equal(masks.grad, m2.grad)


@needs_cuda
def test_cuda_mismatched_devices():
    with pytest.raises(ValueError, match="same device.*cuda.*cpu"):
        fast_nms(torch.rand(5, 4).cuda(), torch.rand(3, 5))
    with pytest.raises(ValueError, match="same device"):
        crop_masks(torch.rand(2, 5, 5).cuda(), torch.rand(2, 4))


def test_fast_nms_nan_scores_rank_first_in_every_path():
    # not a supported input, but the rule is defined (as torch.sort): NaN ranks first, by index
    g = torch.Generator().manual_seed(16)
    boxes, scores = random_boxes(300, g), random_scores(3, 300, g)
    scores[0, [5, 17, 250]] = float("nan")
    scores[1, ::2] = float("nan")  # more NaNs than top_k
    for agnostic in (False, True):
        res = fast_nms(boxes, scores, 0.5, 100, 100, agnostic)
        ref = fast_nms_pytorch(boxes, scores, 0.5, 100, 100, agnostic)
        assert res[0].tolist() == ref[0].tolist() and res[1].tolist() == ref[1].tolist()
        assert same(res[2], ref[2])
