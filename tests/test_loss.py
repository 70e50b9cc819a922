"""YolactLoss against hand-computed cases (official multibox_loss semantics)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

from yolact_d2.modeling.loss import YolactLoss, encode_boxes, match_priors, ohem_negatives


def _cxcywh(xyxy):
    b = torch.tensor(xyxy, dtype=torch.float32)
    return torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], dim=1)


def _target(boxes_px, classes, size, masks=None, crowd=None):
    h, w = size
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes_px, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if masks is None:  # box-shaped masks
        masks = torch.zeros(len(classes), h, w, dtype=torch.bool)
        for i, (x1, y1, x2, y2) in enumerate(boxes_px):
            masks[i, int(y1) : int(y2), int(x1) : int(x2)] = True
    inst.gt_masks = masks if isinstance(masks, (BitMasks, PolygonMasks)) else BitMasks(masks)
    crowd = torch.tensor(crowd if crowd is not None else [], dtype=torch.float32).reshape(-1, 4)
    return {"instances": inst, "crowd_boxes": crowd, "image_size": (h, w)}


# ---------------------------------------------------------------------------------- matching
# Toy priors (xyxy, normalised) with IoUs worked out by hand in the comments.
A, B, D, E = [0, 0, 0.5, 0.5], [0.6, 0.6, 1.0, 1.0], [0, 0.6, 0.4, 1.0], [0, 0.62, 0.4, 1.0]
CROWD = [0.5, 0, 1.0, 0.45]
PRIORS = [
    [0, 0, 0.5, 0.5],  # p0: IoU(A)=1 -> positive A
    [0, 0, 0.5, 0.3],  # p1: IoU(A)=0.6 -> positive A
    [0, 0, 0.5, 0.225],  # p2: IoU(A)=0.45 -> neutral
    [0, 0, 0.5, 0.1],  # p3: IoU(A)=0.2 -> negative
    [0.6, 0.6, 1.0, 0.7],  # p4: IoU(B)=0.25, but B's best prior -> forced positive B
    [0.55, 0, 0.95, 0.4],  # p5: no overlap, inside the crowd box (IoA 1) -> ignored
    [0.4, 0, 0.9, 0.3],  # p6: IoU(A)=0.081, crowd IoA 0.8 > 0.7 -> ignored
    [0.3, 0, 0.8, 0.3],  # p7: IoU(A)=0.176, crowd IoA 0.6 -> stays negative
    [0, 0.6, 0.4, 1.0],  # p8: IoU(D)=1, IoU(E)=0.95 -> D (greedy takes the 1.0 pair first)
    [0, 0.6, 0.4, 0.98],  # p9: IoU(D)=0.95 > IoU(E)=0.9, but E's best remaining prior -> forced E
]


def test_match_priors_positive_negative_neutral_forced_crowd():
    gt = torch.tensor([A, B, D, E])
    state, idx = match_priors(gt, torch.tensor(PRIORS), torch.tensor([CROWD]), 0.5, 0.4, 0.7)
    assert state.tolist() == [1, 1, -1, 0, 1, -1, -1, 0, 1, 1]
    assert idx[[0, 1, 4, 8, 9]].tolist() == [0, 0, 1, 2, 3]


def test_match_without_crowd_and_without_gt():
    state, _ = match_priors(torch.tensor([A, B, D, E]), torch.tensor(PRIORS), None)
    assert state.tolist() == [1, 1, -1, 0, 1, 0, 0, 0, 1, 1]
    state, _ = match_priors(torch.zeros(0, 4), torch.tensor(PRIORS), torch.tensor([CROWD]))
    assert state.tolist() == [0, 0, 0, 0, 0, -1, -1, 0, 0, 0]


def test_loss_matching_uses_pixels_classes_and_crowd():
    # Same case through YolactLoss: boxes in pixels of a 200x100 (HxW) input, classes 0-based.
    size = (200, 100)
    scale = [100, 200, 100, 200]
    px = lambda b: [v * s for v, s in zip(b, scale)]
    target = _target([px(A), px(B), px(D), px(E)], [0, 1, 2, 1], size, crowd=[px(CROWD)])
    loss = YolactLoss(num_classes=3)
    _, _, conf_t, gt_index = loss._match_batch(_cxcywh(PRIORS), [target])
    assert conf_t[0].tolist() == [1, 1, -1, 0, 2, -1, -1, 0, 3, 2]


# ---------------------------------------------------------------------------------- OHEM
def test_ohem_selects_hardest_negatives_three_per_positive():
    # Background logit 0; foreground logit v -> bg loss = log(1 + e^v), increasing in v.
    fg = torch.tensor([5.0, 9.0, 1.0, 3.0, 2.0, 4.0, -1.0, 0.5])
    conf = torch.stack([torch.zeros(8), fg], dim=-1)[None]  # (1, 8, 2)
    conf_t = torch.tensor([[1, -1, 0, 0, 0, 0, 0, 0]])  # p0 positive, p1 neutral (hardest: ignored)
    neg = ohem_negatives(conf, conf_t, 3)
    assert neg[0].nonzero().flatten().tolist() == [3, 4, 5]  # fg 3, 2, 4: the three hardest negatives

    # Not enough negatives: every negative is taken, positives/neutrals never.
    conf_t = torch.tensor([[1, 1, 1, -1, 0, 0, -1, 1]])
    neg = ohem_negatives(conf, conf_t, 3)
    assert neg[0].nonzero().flatten().tolist() == [4, 5]


def test_class_loss_value_by_hand():
    fg = [5.0, 9.0, 1.0, 3.0, 2.0, 4.0, -1.0, 0.5]
    # Priors: p0 = the GT exactly (positive), the rest far away (negatives), none neutral.
    priors = [[0, 0, 0.2, 0.2]] + [[0.5 + 0.05 * i, 0.5, 0.55 + 0.05 * i, 0.6] for i in range(7)]
    target = _target([[0, 0, 20, 20]], [0], (100, 100))
    preds = {
        "loc": torch.zeros(1, 8, 4),
        "conf": torch.tensor([[[0.0, v] for v in fg]]),
        "coef": torch.zeros(1, 8, 2),
        "proto": torch.zeros(1, 4, 4, 2),
    }
    out = YolactLoss(num_classes=1)(preds, _cxcywh(priors), [target])
    # positive p0 target class 1: CE = log(1+e^-5); negatives chosen: fg 9, 4, 3 -> CE = log(1+e^v)
    expected = math.log1p(math.exp(-5)) + sum(math.log1p(math.exp(v)) for v in (9.0, 4.0, 3.0))
    assert out["loss_cls"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------- boxes
def test_encode_official_variances():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt = torch.tensor([[0.45, 0.4, 0.65, 0.8]])  # centre (0.55, 0.6), size (0.2, 0.4)
    delta = encode_boxes(gt, prior)[0].tolist()
    assert delta == pytest.approx([2.5, 5.0, 0.0, math.log(2) / 0.2], abs=1e-5)


def test_box_loss_by_hand():
    priors = _cxcywh([[0.4, 0.3, 0.6, 0.7], [0.9, 0.9, 1.0, 1.0]])  # p0 = centre (0.5,0.5), 0.2x0.4
    target = _target([[45, 40, 65, 80]], [0], (100, 100))  # IoU with p0 = 0.5*0.2*... >= 0.5
    loc = torch.zeros(1, 2, 4)
    loc[0, 0] = torch.tensor([2.0, 0.3, 0.1, -1.0])
    preds = {"loc": loc, "conf": torch.zeros(1, 2, 2), "coef": torch.zeros(1, 2, 2), "proto": torch.zeros(1, 4, 4, 2)}
    out = YolactLoss(num_classes=1)(preds, priors, [target])
    # targets: dx=(0.55-0.5)/(0.1*0.2)=2.5, dy=(0.6-0.5)/(0.1*0.4)=2.5, dw=log(1)/0.2=0, dh=0
    sl1 = lambda d: 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5
    expected = 1.5 * (sl1(2.0 - 2.5) + sl1(0.3 - 2.5) + sl1(0.1 - 0.0) + sl1(-1.0 - 0.0))
    assert out["loss_box"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------- masks
def _bce(p, t):
    return -(t * max(math.log(p), -100) + (1 - t) * max(math.log(1 - p), -100)) if 0 < p < 1 else (
        0.0 if p == t else 100.0
    )


def _mask_oracle(proto, coefs, gt_small, boxes_norm, mask_weight=6.125, num_pos=None):
    """Explicit pixel loops: sigmoid(proto . coef), crop (padding 1), BCE, / box area * Hp*Wp."""
    hp, wp, _ = proto.shape
    total = 0.0
    for coef, t, (x1, y1, x2, y2) in zip(coefs, gt_small, boxes_norm):
        cx1, cx2 = max(x1 * wp - 1, 0), min(x2 * wp + 1, wp)
        cy1, cy2 = max(y1 * hp - 1, 0), min(y2 * hp + 1, hp)
        s = 0.0
        for r in range(hp):
            for c in range(wp):
                v = 1 / (1 + math.exp(-float(np.dot(proto[r, c], coef))))
                if not (cx1 <= c < cx2 and cy1 <= r < cy2):
                    v = 0.0
                s += _bce(v, float(t[r, c]))
        total += s / ((x2 - x1) * wp) / ((y2 - y1) * hp) * (hp * wp)
    return total * mask_weight / hp / wp / (num_pos or len(coefs))


def _mask_case():
    g = torch.Generator().manual_seed(0)
    proto = torch.rand(4, 4, 2, generator=g) * 2 - 1  # (Hp, Wp, K)
    # 8x8 input; GT 0 is the box [0,0,4,4] -> downsampled 4x4 mask rows/cols 0..1; GT 1 = an L shape.
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True
    masks[1, 4:8, 4:6] = True
    masks[1, 6:8, 4:8] = True
    target = _target([[0, 0, 4, 4], [4, 4, 8, 8]], [0, 1], (8, 8), masks=masks)
    gt_small = np.zeros((2, 4, 4))
    gt_small[0, 0:2, 0:2] = 1
    gt_small[1, 2:4, 2:3] = 1
    gt_small[1, 3:4, 2:4] = 1
    # Priors = the two GT boxes exactly (both positive) + a far one (negative).
    priors = _cxcywh([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0.1, 0.6, 0.2, 0.7]])
    coef = torch.tensor([[[0.8, -0.3], [-0.5, 0.9], [0.2, 0.2]]])
    preds = {"loc": torch.zeros(1, 3, 4), "conf": torch.zeros(1, 3, 3), "coef": coef, "proto": proto[None]}
    return preds, priors, target, gt_small


def test_mask_loss_toy_prototypes_by_hand():
    preds, priors, target, gt_small = _mask_case()
    out = YolactLoss(num_classes=2)(preds, priors, [target])
    expected = _mask_oracle(
        preds["proto"][0].numpy(), preds["coef"][0, :2].numpy(), gt_small, [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]
    )
    assert out["loss_mask"].item() == pytest.approx(expected, rel=1e-5)


def test_mask_loss_polygons_equal_bitmasks():
    preds, priors, target, _ = _mask_case()
    ref = YolactLoss(num_classes=2)(preds, priors, [target])
    inst = target["instances"]
    inst.gt_masks = PolygonMasks(
        [[np.array([0, 0, 4, 0, 4, 4, 0, 4], dtype=float)], [np.array([4, 4, 6, 4, 6, 6, 8, 6, 8, 8, 4, 8], dtype=float)]]
    )
    out = YolactLoss(num_classes=2)(preds, priors, [target])
    for k in ref:
        assert out[k].item() == pytest.approx(ref[k].item(), rel=1e-6), k


def test_masks_to_train_cap_rescales():
    # Two positives on the same GT with identical coefficients: capping to one mask and rescaling by
    # 2/1 must give the uncapped loss exactly.
    preds, priors, target, _ = _mask_case()
    priors = torch.cat([priors[:1], priors[:1], priors[2:]])
    coef = preds["coef"].clone()
    coef[0, 1] = coef[0, 0]
    inst = target["instances"][:1]
    target = {**target, "instances": inst}
    preds = {**preds, "coef": coef, "conf": torch.zeros(1, 3, 2)}
    full = YolactLoss(num_classes=1, masks_to_train=100)(preds, priors, [target])["loss_mask"]
    capped = YolactLoss(num_classes=1, masks_to_train=1)(preds, priors, [target])["loss_mask"]
    assert capped.item() == pytest.approx(full.item(), rel=1e-6)


def test_semseg_loss_by_hand():
    preds, priors, target, gt_small = _mask_case()
    # P3 grid 4x4 like the prototypes here; logits 2 everywhere.
    preds["segm"] = torch.full((1, 2, 4, 4), 2.0)
    out = YolactLoss(num_classes=2)(preds, priors, [target])
    ones = gt_small.sum()  # class 0 gets GT 0, class 1 gets GT 1
    zeros = 2 * 16 - ones
    expected = (ones * math.log1p(math.exp(-2)) + zeros * math.log1p(math.exp(2))) / 16
    assert out["loss_semseg"].item() == pytest.approx(expected, rel=1e-5)


def test_semseg_target_is_the_per_class_union_brute_force():
    # Two overlapping GT masks of class 1, one of class 0, none of class 2; masks at the P3 size, so
    # the downsampling is the identity. Oracle: the union per class and the BCE, pixel by pixel.
    h, w, num_classes = 5, 6, 3
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, 0:3, 0:4] = True
    masks[1, 2:5, 2:6] = True
    masks[2, 1:4, 1:3] = True
    classes = [1, 1, 0]
    target = _target([[0, 0, 4, 3], [2, 2, 6, 5], [1, 1, 3, 4]], classes, (h, w), masks=masks)
    segm = torch.randn(1, num_classes, h, w, generator=torch.Generator().manual_seed(0))
    loss = YolactLoss(num_classes=num_classes, semseg_weight=1.0)._semseg_loss(
        segm, [target], [torch.tensor(classes)])
    total = 0.0
    for c in range(num_classes):
        for y in range(h):
            for x in range(w):
                t = float(any(classes[g] == c and masks[g, y, x] for g in range(3)))
                z = float(segm[0, c, y, x])
                total += max(z, 0) - z * t + math.log1p(math.exp(-abs(z)))  # BCE with logits
    assert loss.item() == pytest.approx(total / (h * w), rel=1e-6)


class _MeanIoUNet(nn.Module):
    """Stand-in mask-IoU net with a hand-computable output: class c predicts (c+1) * mean(mask)."""

    def __init__(self, num_classes):
        super().__init__()
        self.scale = nn.Parameter(torch.arange(1, num_classes + 1, dtype=torch.float32))

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None] * self.scale


def test_maskiou_loss_by_hand():
    preds, priors, target, gt_small = _mask_case()
    preds["maskiou_net"] = _MeanIoUNet(2)
    out = YolactLoss(num_classes=2, maskiou_discard_area=0)(preds, priors, [target])
    expected = 0.0
    for i, (label, (x1, y1, x2, y2)) in enumerate(zip([0, 1], [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]])):
        pred = torch.sigmoid(torch.einsum("hwk,k->hw", preds["proto"][0], preds["coef"][0, i])).numpy()
        inside = np.zeros((4, 4))
        inside[max(int(y1 * 4) - 1, 0) : min(int(y2 * 4) + 1, 4), max(int(x1 * 4) - 1, 0) : min(int(x2 * 4) + 1, 4)] = 1
        pred = pred * inside
        binary = (pred > 0.5).astype(float)
        inter = (binary * gt_small[i]).sum()
        iou = inter / (binary.sum() + gt_small[i].sum() - inter)
        p = (label + 1) * pred.mean()
        d = abs(p - iou)
        expected += 0.5 * d * d if d < 1 else d - 0.5
    expected *= 25.0 / 2  # weight 25, two positives
    assert "loss_maskiou" in out
    assert out["loss_maskiou"].item() == pytest.approx(expected, rel=1e-5)
    # Official discard_mask_area=25 (prototype pixels) drops both tiny masks: the term is a zero.
    out = YolactLoss(num_classes=2)(preds, priors, [target])
    assert out["loss_maskiou"].item() == 0.0


# ---------------------------------------------------------------------------------- misc
def test_no_objects_gives_finite_zero_losses_and_gradients():
    preds, priors, _, _ = _mask_case()
    preds = {k: v.clone().requires_grad_(True) for k, v in preds.items()}
    preds["segm"] = torch.zeros(1, 2, 4, 4, requires_grad=True)
    empty = _target([], [], (8, 8))
    out = YolactLoss(num_classes=2)(preds, priors, [empty])
    total = sum(out.values())
    total.backward()
    assert torch.isfinite(total)
    assert out["loss_box"].item() == 0 and out["loss_mask"].item() == 0 and out["loss_cls"].item() == 0


def test_bad_class_count_and_class_ids_raise():
    preds, priors, target, _ = _mask_case()
    with pytest.raises(ValueError, match="3 classes"):
        YolactLoss(num_classes=3)(preds, priors, [target])
    target["instances"].gt_classes = torch.tensor([0, 5])
    with pytest.raises(ValueError, match=r"gt_classes must lie in \[0, 2\)"):
        YolactLoss(num_classes=2)(preds, priors, [target])


def test_masks_of_a_smaller_padded_image_are_padded_and_larger_ones_rejected():
    # An image padded in the batch (shortest-edge mode): its masks cover only the top-left part.
    preds, priors, target, _ = _mask_case()
    inst = target["instances"]
    small = Instances((6, 8))
    small.gt_boxes, small.gt_classes = inst.gt_boxes, inst.gt_classes
    small.gt_masks = BitMasks(inst.gt_masks.tensor[:, :6, :])  # rows 6-7 are batch padding
    out = YolactLoss(num_classes=2)(preds, priors, [{**target, "instances": small}])
    # Oracle: the full-size masks with the padding rows zeroed.
    zeroed = inst.gt_masks.tensor.clone()
    zeroed[:, 6:, :] = False
    inst.gt_masks = BitMasks(zeroed)
    ref = YolactLoss(num_classes=2)(preds, priors, [target])
    for k in ref:
        assert out[k].item() == pytest.approx(ref[k].item(), rel=1e-6), k
    big = Instances((10, 8))
    big.gt_boxes, big.gt_classes = inst.gt_boxes, inst.gt_classes
    big.gt_masks = BitMasks(torch.zeros(2, 10, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"gt_masks have size \(10, 8\) but the network input is \(8, 8\)"):
        YolactLoss(num_classes=2)(preds, priors, [{**target, "instances": big}])


# ---------------------------------------------------------------------------------- divergence
def _official_bce_exact(logit, t, inside):
    """Official per-pixel loss (sigmoid, crop to 0, BCE with logs clamped at -100) in 40-digit decimal
    arithmetic (no float rounding of sigmoid to 0 or 1)."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 40
        p = 1 / (1 + (-Decimal(logit)).exp()) if inside else Decimal(0)
        log_p = p.ln() if p > 0 else Decimal(-1000)
        log_1mp = (1 - p).ln() if p < 1 else Decimal(-1000)
        t = Decimal(t)
        return float(-(t * max(log_p, Decimal(-100)) + (1 - t) * max(log_1mp, Decimal(-100))))


def test_mask_bce_from_logits_equals_official_formula_including_clamps():
    from yolact_d2.modeling.loss import official_mask_bce

    # 1 mask, 4x4 prototype grid, box = left half (cols 0..1, padding 0): cols 2..3 are outside.
    logits = torch.tensor([[[-30.0, -8.0, 0.5, 40.0], [2.0, 15.0, -3.0, -120.0], [30.0, -0.25, 7.0, 0.0],
                            [-15.0, 16.0, 110.0, -9.0]]])
    target = torch.tensor([[[0.0, 1, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 1]]])
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    out = official_mask_bce(logits, target, boxes, padding=0)
    for r in range(4):
        for c in range(4):
            expected = _official_bce_exact(float(logits[0, r, c]), float(target[0, r, c]), inside=c < 2)
            assert out[0, r, c].item() == pytest.approx(expected, rel=1e-5, abs=1e-6), (r, c)
    # e.g. outside the box a foreground pixel costs the clamp (100), a background pixel nothing
    assert out[0, 1, 3].item() == 100.0 and out[0, 0, 3].item() == 0.0


def test_non_finite_predictions_are_named_before_any_loss():
    from yolact_d2.modeling.loss import NonFinitePredictionError

    preds, priors, target, _ = _mask_case()
    preds["proto"] = preds["proto"].clone()
    preds["proto"][0, 1, 2, 0] = float("inf")
    preds["coef"] = preds["coef"] * float("nan")
    with pytest.raises(NonFinitePredictionError, match=r"Prediction\(s\) coef, proto hold NaN/inf") as info:
        YolactLoss(num_classes=2)(preds, priors, [target])
    assert info.value.names == ["coef", "proto"]
    # Huge but finite logits (sigmoid rounds to exactly 1 / 0) give a finite loss, not a range error.
    preds, priors, target, _ = _mask_case()
    preds["coef"] = preds["coef"] * 1e6
    out = YolactLoss(num_classes=2)(preds, priors, [target])
    assert all(torch.isfinite(v) for v in out.values())


def test_masks_to_train_subset_follows_the_iteration_not_the_global_rng():
    from detectron2.utils.events import EventStorage

    preds, priors, target, _ = _mask_case()
    # Three positives of GT 0 with different coefficients; a cap of 1 picks one of them at random.
    priors = torch.cat([priors[:1], priors[:1], priors[:1], priors[2:]])
    coef = torch.tensor([[[0.8, -0.3], [-0.5, 0.9], [2.0, 1.0], [0.2, 0.2]]])
    preds = {**preds, "coef": coef, "loc": torch.zeros(1, 4, 4), "conf": torch.zeros(1, 4, 2)}
    target = {**target, "instances": target["instances"][:1]}
    loss = YolactLoss(num_classes=1, masks_to_train=1)
    per_mask = [YolactLoss(num_classes=1)({**preds, "coef": coef[:, [i, i, i, 3]]}, priors, [target])["loss_mask"]
                for i in range(3)]  # the uncapped loss when all three positives equal mask i

    def at_iteration(it, global_seed):
        torch.manual_seed(global_seed)
        with EventStorage(it):
            return loss(preds, priors, [target])["loss_mask"].item()

    values = [at_iteration(it, 0) for it in range(12)]
    assert values == [at_iteration(it, 123) for it in range(12)]  # the global RNG does not matter
    # each is one of the three masks (rescaled by 3/1), and the iterations do not all pick the same
    assert all(min(abs(v - m.item()) for m in per_mask) < 1e-5 * v for v in values)
    assert len({round(v, 4) for v in values}) > 1
