"""Decoding and post-processing on hand-computed cases (official Detect + postprocess rules)."""
import math

import pytest
import torch

from detectron2.modeling.box_regression import Box2BoxTransform

from yolact_d2.modeling.inference import YolactPostProcessor, decode_boxes


def test_decode_formula_and_no_clamp():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.1], [0.25, 0.75, 0.05, 0.05]])
    loc = torch.tensor([[1.0, -2.0, 0.5, -0.5], [0.0, 0.0, 25.0, 0.0]])
    got = decode_boxes(loc, priors)
    cx, cy = 0.5 + 1.0 * 0.1 * 0.2, 0.5 - 2.0 * 0.1 * 0.1
    w, h = 0.2 * math.exp(0.5 * 0.2), 0.1 * math.exp(-0.5 * 0.2)
    assert got[0].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], abs=1e-6)
    # dw = 25 * 0.2 = 5 > log(1000/16) = 4.14: Detectron2 would clamp, YOLACT does not
    big_w = 0.05 * math.exp(5.0)
    assert (got[1, 2] - got[1, 0]).item() == pytest.approx(big_w, rel=1e-5)
    clamped = Box2BoxTransform(weights=(10, 10, 5, 5)).apply_deltas(
        loc, torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    )
    assert (clamped[1, 2] - clamped[1, 0]).item() < big_w / 2
    unclamped = Box2BoxTransform(weights=(10, 10, 5, 5), scale_clamp=float("inf")).apply_deltas(
        loc, torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    )
    torch.testing.assert_close(got, unclamped, rtol=1e-5, atol=1e-6)
    assert decode_boxes(loc[None].expand(3, 2, 4), priors).shape == (3, 2, 4)  # batched


def _case():
    """4 candidate boxes, 2 classes (+ background). Probabilities per prior: [bg, c0, c1]."""
    boxes = torch.tensor(
        [
            [0.10, 0.10, 0.50, 0.50],  # A: c0 0.90
            [0.11, 0.10, 0.51, 0.50],  # B: c0 0.80, overlaps A (IoU ~0.95) -> suppressed in c0
            [0.10, 0.11, 0.50, 0.51],  # C: c1 0.70, same place, other class -> kept (per class)
            [0.60, 0.60, 0.90, 0.90],  # D: best 0.04 <= conf_thresh -> dropped before NMS
        ]
    )
    conf = torch.tensor([[0.05, 0.90, 0.05], [0.15, 0.80, 0.05], [0.25, 0.05, 0.70], [0.92, 0.04, 0.04]])
    return boxes, conf


def _run(pp, boxes, conf, out_size=(100, 200), proto=None, coef=None):
    if proto is None:
        proto = torch.ones(4, 4, 1)
        coef = torch.full((boxes.shape[0], 1), 10.0)
    return pp(boxes, conf, coef, proto, valid_size=(550, 550), input_size=(550, 550), output_size=out_size)


def test_fast_nms_per_class_and_filters():
    boxes, conf = _case()
    r = _run(YolactPostProcessor(), boxes, conf)
    assert r.pred_classes.tolist() == [0, 1]
    assert r.scores.tolist() == pytest.approx([0.90, 0.70])
    # pixels: x * 200, y * 100, truncated like the official .long()
    assert r.pred_boxes.tensor.tolist() == [[20.0, 10.0, 100.0, 50.0], [20.0, 11.0, 100.0, 51.0]]
    assert r.image_size == (100, 200) and r.pred_masks.shape == (2, 100, 200)
    assert r.pred_masks.dtype == torch.bool


def test_class_agnostic_standard_threshold_and_max():
    boxes, conf = _case()
    r = _run(YolactPostProcessor(class_agnostic=True), boxes, conf)
    assert r.pred_classes.tolist() == [0] and r.scores.tolist() == pytest.approx([0.9])
    r = _run(YolactPostProcessor(standard_nms=True), boxes, conf)
    assert r.pred_classes.tolist() == [0, 1] and r.scores.tolist() == pytest.approx([0.90, 0.70])
    r = _run(YolactPostProcessor(score_thresh=0.75), boxes, conf)
    assert r.scores.tolist() == pytest.approx([0.9])
    r = _run(YolactPostProcessor(max_detections=1), boxes, conf)
    assert len(r) == 1
    # Loose IoU: nothing suppressed. Official Fast NMS has no per-class score threshold, so the
    # low (class, box) pairs of surviving priors come out too (score 0.05).
    r = _run(YolactPostProcessor(nms_iou=0.99), boxes, conf)
    assert r.scores.tolist() == pytest.approx([0.90, 0.80, 0.70, 0.05, 0.05, 0.05])
    r = _run(YolactPostProcessor(conf_thresh=0.95), boxes, conf)
    assert len(r) == 0 and r.pred_masks.shape == (0, 100, 200) and r.pred_boxes.tensor.shape == (0, 4)
    with pytest.raises(ValueError, match="class_agnostic"):
        YolactPostProcessor(class_agnostic=True, standard_nms=True)


def test_box_sanitising():
    boxes = torch.tensor([[0.55, 0.95, 0.25, -0.2], [0.9, 0.5, 1.3, 0.7]])  # swapped / outside
    conf = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = _run(YolactPostProcessor(score_thresh=0.5), boxes, conf, out_size=(10, 20))
    assert r.pred_boxes.tensor.tolist() == [[5.0, 0.0, 11.0, 9.0], [18.0, 5.0, 20.0, 7.0]]
    r = _run(YolactPostProcessor(score_thresh=0.5, integer_boxes=False), boxes, conf, out_size=(10, 20))
    torch.testing.assert_close(r.pred_boxes.tensor, torch.tensor([[5.0, 0.0, 11.0, 9.5], [18.0, 5.0, 20.0, 7.0]]))


def test_mask_crop_then_upsample():
    # One detection, prototypes 4x4 all ones, big coefficient -> sigmoid ~ 1 everywhere.
    boxes = torch.tensor([[0.30, 0.30, 0.55, 0.55]])
    conf = torch.tensor([[0.0, 1.0, 0.0]])
    r = _run(YolactPostProcessor(), boxes, conf, out_size=(8, 8))
    # crop at 4x4: x1 = 0.3*4 - 1 = 0.2, x2 = 0.55*4 + 1 = 3.2 -> columns 1..3 kept, column 0 zero.
    # bilinear 4 -> 8 (align_corners=False): output column 0 and 1 read input column 0 (weight >= 0.75)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:, 2:] = True  # output pixel 1 = 0.75 * col0 + 0.25 * col1 = 0.25 -> False; 2 -> 0.75 -> True
    assert torch.equal(r.pred_masks[0], expected)
    r = _run(YolactPostProcessor(crop=False), boxes, conf, out_size=(8, 8))
    assert r.pred_masks.all()


def test_padded_canvas_maps_back_to_the_image():
    # Image resized to 275x550 inside a 550x550 canvas; original 300x600.
    pp = YolactPostProcessor(integer_boxes=False, score_thresh=0.5)
    boxes = torch.tensor([[0.25, 0.125, 0.5, 0.25]])  # relative to the canvas
    conf = torch.tensor([[0.0, 1.0, 0.0]])
    r = pp(boxes, conf, torch.full((1, 1), 10.0), torch.ones(8, 8, 1), (275, 550), (550, 550), (300, 600))
    torch.testing.assert_close(r.pred_boxes.tensor, torch.tensor([[150.0, 75.0, 300.0, 150.0]]))
    # Crop on the 8x8 prototypes: columns 1..4, rows 0..2. Their 0.5-level edges on the canvas
    # are at 1 * 550/8 = 68.75 and 5 * 550/8 = 343.75 (x), 3 * 550/8 = 206.25 (y); in the image
    # (x 600/550, y 300/275): x 75 .. 375, y 0 .. 225.
    rows, cols = torch.nonzero(r.pred_masks[0], as_tuple=True)
    assert r.pred_masks.shape == (1, 300, 600)
    assert abs(cols.min().item() - 75) <= 1 and abs(cols.max().item() - 374) <= 1
    assert rows.min().item() == 0 and abs(rows.max().item() - 224) <= 1


def test_mask_rescoring_keeps_class_scores_for_boxes_and_rescores_masks():
    """Official YOLACT++ (rescore_bbox=False): `scores` stay the class scores, in NMS order;
    `mask_scores` = class score x predicted IoU of its class (hand-computed); the score threshold
    applies to the class score, before re-scoring."""
    boxes, conf = _case()
    seen = {}

    def maskiou(masks):  # (D, 1, Hp, Wp) cropped mask probabilities -> (D, C) predicted IoU
        seen["shape"] = tuple(masks.shape)
        return torch.tensor([[0.5, 0.1], [0.3, 0.8]])

    pp = YolactPostProcessor(score_thresh=0.5)
    r = pp(boxes, conf, torch.full((4, 1), 10.0), torch.ones(4, 4, 1), (550, 550), (550, 550), (100, 200), mask_rescoring=maskiou)
    assert seen["shape"] == (2, 1, 4, 4)
    assert r.pred_classes.tolist() == [0, 1]
    assert r.scores.tolist() == pytest.approx([0.90, 0.70])  # boxes: class scores, sorted
    # masks: 0.9 x 0.5 = 0.45 (kept although below score_thresh=0.5), 0.7 x 0.8 = 0.56
    assert r.mask_scores.tolist() == pytest.approx([0.45, 0.56])
    assert not _run(YolactPostProcessor(), boxes, conf).has("mask_scores")  # plain YOLACT: none


def test_standard_nms_uses_the_official_plus_one_pixel_iou():
    # Two 10x10-pixel boxes (at a 100 input) shifted by 4 px: IoU 60/140 = 0.43 without the +1,
    # with the official "+1" (11x11 boxes, 7x11 overlap): 77/165 = 0.467 > 0.45 -> suppressed.
    boxes = torch.tensor([[0.10, 0.10, 0.20, 0.20], [0.14, 0.10, 0.24, 0.20]])
    conf = torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.8, 0.2]])
    pp = YolactPostProcessor(standard_nms=True, nms_iou=0.45)
    keep, classes, scores = pp._standard_nms(boxes, conf[:, 1:].t(), (100, 100))
    # class 0: A (0.9) suppresses B (0.8); class 1: B (0.2) suppresses A (0.1)
    assert keep.tolist() == [0, 1] and classes.tolist() == [0, 1]
    assert scores.tolist() == pytest.approx([0.9, 0.2])


def test_windowed_mask_paste_equals_full_upsampling():
    """The CPU fast path (upsample each cropped mask only where it can be non-zero), compiled kernel
    and pure-PyTorch reference, gives exactly the official full-image bilinear upsampling +
    threshold, also when shrinking, for an empty mask and a NaN pixel."""
    import torch.nn.functional as F

    from yolact_d2.layers import backend_info, crop_masks, paste_masks, paste_masks_pytorch

    assert backend_info()["paste_masks"]["cpu"] == "cpu-kernel"
    g = torch.Generator().manual_seed(0)
    for hp, wp, h, w in [(138, 138, 480, 640), (50, 37, 101, 333), (64, 64, 40, 30), (9, 7, 9, 7), (5, 5, 3, 200)]:
        masks = crop_masks(torch.sigmoid(3 * torch.randn(24, hp, wp, generator=g)), torch.rand(24, 4, generator=g))
        masks[0] = 0  # an empty mask
        masks[1, hp // 2, wp // 2] = float("nan")
        want = F.interpolate(masks[None], (h, w), mode="bilinear", align_corners=False)[0] > 0.5
        assert torch.equal(paste_masks(masks, (h, w), 0.5), want), (hp, wp, h, w)
        assert torch.equal(paste_masks_pytorch(masks, (h, w), 0.5), want), (hp, wp, h, w)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        paste_masks(masks, (h, w), -0.1)
    with pytest.raises(ValueError, match="float32"):
        paste_masks(masks.double(), (h, w), 0.5)
