"""End-to-end Yolact inference against an independent re-statement of the official forward pass.

`official_detections` follows dbolya/yolact (FastBaseTransform, ResNetBackbone, FPN, proto_net,
PredictionModule, make_priors, decode, Detect.fast_nms, postprocess) step by step on the
official-layout state dict; the model under test gets the same weights through our converter.
"""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checkpoint_helpers import load_and_report
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY

from yolact_d2.checkpoint import convert_official_state_dict, synthetic_official_state_dict
from yolact_d2.modeling import Yolact

MEANS = torch.tensor([103.94, 116.78, 123.68]).view(1, 3, 1, 1)
STD = torch.tensor([57.38, 57.12, 58.40]).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------ the oracle
def _bn(sd, x, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)


def _conv(sd, x, p, **kw):
    return F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), **kw)


def _jaccard(a, b):  # official box_utils.jaccard for (n, A, 4) x (n, B, 4)
    max_xy = torch.min(a[:, :, None, 2:], b[:, None, :, 2:])
    min_xy = torch.max(a[:, :, None, :2], b[:, None, :, :2])
    inter = (max_xy - min_xy).clamp(min=0).prod(3)
    area_a = ((a[:, :, 2] - a[:, :, 0]) * (a[:, :, 3] - a[:, :, 1]))[:, :, None]
    area_b = ((b[:, :, 2] - b[:, :, 0]) * (b[:, :, 3] - b[:, :, 1]))[:, None, :]
    return inter / (area_a + area_b - inter)


def official_detections(sd, image_hwc_bgr, blocks=(3, 4, 6, 3), max_size=550, scales=(24, 48, 96, 192, 384)):
    """classes, scores, boxes (long pixels), masks (bool) as official eval.py's postprocess gives."""
    h, w = image_hwc_bgr.shape[:2]
    x = torch.from_numpy(image_hwc_bgr).float()[None].permute(0, 3, 1, 2)
    x = F.interpolate(x, (max_size, max_size), mode="bilinear", align_corners=False)
    x = ((x - MEANS) / STD)[:, (2, 1, 0)]
    # ResNetBackbone
    x = F.max_pool2d(F.relu(_bn(sd, _conv(sd, x, "backbone.conv1", stride=2, padding=3), "backbone.bn1")), 3, 2, 1)
    outs = []
    for i, n in enumerate(blocks):
        for b in range(n):
            p = f"backbone.layers.{i}.{b}."
            s = (1 if i == 0 else 2) if b == 0 else 1
            y = F.relu(_bn(sd, _conv(sd, x, p + "conv1"), p + "bn1"))
            y = F.relu(_bn(sd, _conv(sd, y, p + "conv2", stride=s, padding=1), p + "bn2"))
            y = _bn(sd, _conv(sd, y, p + "conv3"), p + "bn3")
            res = _bn(sd, _conv(sd, x, p + "downsample.0", stride=s), p + "downsample.1") if p + "downsample.0.weight" in sd else x
            x = F.relu(y + res)
        outs.append(x)
    convouts = outs[1:]
    # FPN (lat/pred layers stored coarsest first)
    fpn, top = [None] * 3, torch.zeros(1)
    for k in range(3):
        j = 2 - k
        if j < 2:
            top = F.interpolate(top, size=convouts[j].shape[-2:], mode="bilinear", align_corners=False)
        top = top + _conv(sd, convouts[j], f"fpn.lat_layers.{k}")
        fpn[j] = top
    for k in range(3):
        j = 2 - k
        fpn[j] = F.relu(_conv(sd, fpn[j], f"fpn.pred_layers.{k}", padding=1))
    for k in range(2):
        fpn.append(_conv(sd, fpn[-1], f"fpn.downsample_layers.{k}", stride=2, padding=1))
    # proto_net on P3
    t = fpn[0]
    for k in (0, 2, 4):
        t = F.relu(_conv(sd, t, f"proto_net.{k}", padding=1))
    t = F.relu(F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False))
    t = F.relu(_conv(sd, t, "proto_net.8", padding=1))
    proto = F.relu(_conv(sd, t, "proto_net.10")).permute(0, 2, 3, 1)[0]
    # shared PredictionModule + make_priors
    locs, confs, coefs, priors = [], [], [], []
    for level, f in enumerate(fpn):
        u = F.relu(_conv(sd, f, "prediction_layers.0.upfeature.0", padding=1))
        locs.append(_conv(sd, u, "prediction_layers.0.bbox_layer", padding=1).permute(0, 2, 3, 1).reshape(-1, 4))
        c = _conv(sd, u, "prediction_layers.0.conf_layer", padding=1)
        confs.append(c.permute(0, 2, 3, 1).reshape(-1, c.shape[1] // 3))
        coefs.append(torch.tanh(_conv(sd, u, "prediction_layers.0.mask_layer", padding=1).permute(0, 2, 3, 1).reshape(-1, 32)))
        ch, cw = f.shape[-2:]
        for j, i in itertools.product(range(ch), range(cw)):
            for ar in (1, 1 / 2, 2):
                pw = scales[level] * math.sqrt(ar) / max_size
                priors += [(i + 0.5) / cw, (j + 0.5) / ch, pw, pw]
    loc, conf, coef = torch.cat(locs), torch.softmax(torch.cat(confs), -1), torch.cat(coefs)
    priors = torch.tensor(priors, dtype=torch.float32).view(-1, 4)
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:], priors[:, 2:] * torch.exp(loc[:, 2:] * 0.2)), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    # Detect: conf pre-filter then fast_nms
    cur = conf.t()[1:]
    keep = cur.max(dim=0).values > 0.05
    scores, boxes, coef = cur[:, keep], boxes[keep], coef[keep]
    scores, idx = scores.sort(1, descending=True)
    idx, scores = idx[:, :200], scores[:, :200]
    nc, nd = idx.shape
    cand = boxes[idx.reshape(-1)].view(nc, nd, 4)
    cand_coef = coef[idx.reshape(-1)].view(nc, nd, -1)
    iou = _jaccard(cand, cand).triu_(diagonal=1)
    kept = iou.max(dim=1).values <= 0.5
    classes = torch.arange(nc)[:, None].expand_as(kept)[kept]
    boxes, coef, scores = cand[kept], cand_coef[kept], scores[kept]
    scores, order = scores.sort(0, descending=True)
    order, scores = order[:100], scores[:100]
    classes, boxes, coef = classes[order], boxes[order], coef[order]
    # postprocess: lincomb, sigmoid, crop at proto resolution, upsample, threshold, sanitize
    masks = torch.sigmoid(proto @ coef.t())
    ph, pw_, n = masks.shape
    x1 = torch.min(boxes[:, 0], boxes[:, 2]) * pw_
    x2 = torch.max(boxes[:, 0], boxes[:, 2]) * pw_
    y1 = torch.min(boxes[:, 1], boxes[:, 3]) * ph
    y2 = torch.max(boxes[:, 1], boxes[:, 3]) * ph
    x1, x2, y1, y2 = (x1 - 1).clamp(min=0), (x2 + 1).clamp(max=pw_), (y1 - 1).clamp(min=0), (y2 + 1).clamp(max=ph)
    cols = torch.arange(pw_, dtype=x1.dtype).view(1, -1, 1)
    rows = torch.arange(ph, dtype=x1.dtype).view(-1, 1, 1)
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    masks = (masks * inside.float()).permute(2, 0, 1)
    masks = F.interpolate(masks[None], (h, w), mode="bilinear", align_corners=False)[0] > 0.5
    bx1, bx2 = boxes[:, 0] * w, boxes[:, 2] * w
    by1, by2 = boxes[:, 1] * h, boxes[:, 3] * h
    out_boxes = torch.stack(
        [torch.min(bx1, bx2).clamp(min=0), torch.min(by1, by2).clamp(min=0), torch.max(bx1, bx2).clamp(max=w), torch.max(by1, by2).clamp(max=h)], 1
    ).long()
    return classes, scores, out_boxes, masks


# ------------------------------------------------------------------------------ fixtures
def realish_image(h, w, seed=0):
    """A smooth background with a few solid shapes (uint8 BGR HWC)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) * 127 / (h + w)) + 60], -1)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
        img[y0 : y0 + rng.integers(h // 8, h // 3), x0 : x0 + rng.integers(w // 8, w // 3)] = rng.integers(0, 255, 3)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _inputs(img):
    return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), "height": img.shape[0], "width": img.shape[1]}


def _seeded_r50(input_size=550):
    """(model, official state dict): R50 config with seeded weights loaded through the converter."""
    cfg = LazyConfig.load("configs/yolact/yolact_R_50_FPN_550.py")
    if input_size != 550:  # the official im400/im700 rule, for fast tests at a small size
        cfg.model.input_size = input_size
        cfg.model.prior_generator.scales = [[int(s / 550 * input_size)] for s in (24, 48, 96, 192, 384)]
    model = instantiate(cfg.model).eval()
    official = synthetic_official_state_dict("yolact_resnet50_config", seed=1)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted, _ = convert_official_state_dict(official, expected)
    model.load_state_dict(converted, strict=True)
    return model, official


@pytest.fixture(scope="module")
def r50():
    return _seeded_r50(550)


@pytest.fixture(scope="module")
def small():
    """The same seeded R50 at a 192 input: cheap for behaviour tests on a busy 2-core machine."""
    return _seeded_r50(192)


def _assert_same_detections(got, want, score_atol=1e-5):
    """Equal detections up to float noise: scores within score_atol, boxes within 1 px (integer
    truncation), mean mask IoU >= 0.999. Near-tied scores (batch vs single convs differ by ~1e-6)
    may swap neighbours, so each detection is matched within +-3 ranks."""
    assert len(got) == len(want)
    used, ious = set(), []
    for i in range(len(want)):
        for j in range(max(0, i - 3), min(len(got), i + 4)):
            if j in used or got.pred_classes[j] != want.pred_classes[i]:
                continue
            if abs(got.scores[j] - want.scores[i]) > score_atol:
                continue
            if (got.pred_boxes.tensor[j] - want.pred_boxes.tensor[i]).abs().max() > 1.0:
                continue
            used.add(j)
            ious.append(_mask_iou(got.pred_masks[j : j + 1], want.pred_masks[i : i + 1]).item())
            break
        else:
            raise AssertionError(f"detection {i} (class {want.pred_classes[i]}, score {want.scores[i]:.6f}) has no match")
    assert sum(ious) / max(len(ious), 1) >= 0.999


def _mask_iou(a, b):
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


# ------------------------------------------------------------------------------ tests
def test_registered_and_output_contract(small):
    assert META_ARCH_REGISTRY.get("Yolact") is Yolact
    model, _ = small
    img = realish_image(120, 160)
    inst = model([_inputs(img)])[0]["instances"]
    assert inst.image_size == (120, 160)
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert inst.pred_masks.shape == (len(inst), 120, 160) and inst.pred_masks.dtype == torch.bool
    assert 0 < len(inst) <= 100 and inst.pred_classes.dtype == torch.int64
    assert (inst.scores[:-1] >= inst.scores[1:]).all()


@pytest.mark.slow
def test_matches_official_forward_on_seeded_weights(r50):
    model, official = r50
    img = realish_image(300, 400, seed=3)
    with torch.no_grad():
        want_cls, want_scores, want_boxes, want_masks = official_detections(official, img)
        got = model([_inputs(img)])[0]["instances"]
    assert len(got) == len(want_cls) and len(got) > 10
    assert torch.equal(got.pred_classes, want_cls)
    torch.testing.assert_close(got.scores, want_scores, rtol=0, atol=1e-5)
    assert (got.pred_boxes.tensor - want_boxes.float()).abs().max() <= 0.5
    assert _mask_iou(got.pred_masks, want_masks).min() >= 0.999


def test_batch_of_different_sizes_equals_singles(small):
    model, _ = small
    a, b = realish_image(200, 300, seed=4), realish_image(310, 170, seed=5)
    with torch.no_grad():
        batch = model([_inputs(a), _inputs(b)])
        singles = [model([_inputs(a)])[0], model([_inputs(b)])[0]]
    for got, want in zip(batch, singles):
        assert got["instances"].image_size == want["instances"].image_size
        _assert_same_detections(got["instances"], want["instances"])


def test_shortest_edge_mode(small):
    model, _ = small
    square = realish_image(192, 192, seed=6)
    wide = realish_image(200, 400, seed=7)
    squash_out = model([_inputs(square)])[0]["instances"]
    model.resize_mode = "shortest_edge"
    try:
        assert model._resized_size(200, 400) == (96, 192)
        assert model._resized_size(301, 150) == (192, 96)  # int(95.68 + 0.5)
        same = model([_inputs(square)])[0]["instances"]  # a 192 square needs no resize or padding
        batch = model([_inputs(wide), _inputs(square)])
        single = model([_inputs(wide)])[0]["instances"]
    finally:
        model.resize_mode = "squash"
    _assert_same_detections(same, squash_out)
    g = batch[0]["instances"]
    assert g.image_size == (200, 400) and g.pred_masks.shape[1:] == (200, 400)
    _assert_same_detections(g, single)  # fixed canvas: batch == single
    assert (g.pred_boxes.tensor[:, 2] <= 400).all() and (g.pred_boxes.tensor[:, 3] <= 200).all()


def test_checkpointer_loads_converted_file(tmp_path, r50):
    model, official = r50
    path = tmp_path / "converted.pth"
    converted, _ = convert_official_state_dict(official, {k: v.shape for k, v in model.state_dict().items()})
    torch.save({"model": converted}, path)
    fresh = instantiate(LazyConfig.load("configs/yolact/yolact_R_50_FPN_550.py").model).eval()
    incompatible = load_and_report(fresh, path)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_training_forward_hands_contract_tensors_to_criterion(small):
    from detectron2.structures import BitMasks, Boxes, Instances

    model, _ = small
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, predictions, priors, targets):
            seen.update(predictions=predictions, priors=priors, targets=targets)
            return {"loss_box": predictions["loc"].sum() * 0}

    original = model.criterion
    model.criterion, model.training = Recorder(), True
    try:
        inst = Instances((192, 192))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 100.0, 150.0]]))
        inst.gt_classes = torch.tensor([3])
        inst.gt_masks = BitMasks(torch.zeros(1, 192, 192, dtype=torch.bool))
        img = torch.zeros(3, 192, 192, dtype=torch.uint8)
        losses = model([{"image": img, "instances": inst}, {"image": img, "instances": inst, "crowd_boxes": torch.zeros(0, 4)}])
    finally:
        model.training, model.criterion = False, original
    p = seen["predictions"]
    assert set(losses) == {"loss_box"}
    # 192 input: levels 24, 12, 6, 3, 2 -> (576 + 144 + 36 + 9 + 4) * 3 = 2307 priors
    assert p["loc"].shape == (2, 2307, 4) and p["conf"].shape == (2, 2307, 81) and p["coef"].shape == (2, 2307, 32)
    assert p["proto"].shape == (2, 48, 48, 32) and p["segm"].shape == (2, 80, 24, 24)
    assert seen["priors"].shape == (2307, 4)
    assert seen["targets"][0]["image_size"] == (192, 192) and seen["targets"][0]["crowd_boxes"].shape == (0, 4)


def test_bad_arguments_are_named():
    cfg = LazyConfig.load("configs/yolact/yolact_R_50_FPN_550.py")
    cfg.model.head.num_classes = 3
    with pytest.raises(ValueError, match="num_classes=80 but the head predicts 3"):
        instantiate(cfg.model)
    cfg = LazyConfig.load("configs/yolact/yolact_R_50_FPN_550.py")
    cfg.model.resize_mode = "letterbox"
    with pytest.raises(ValueError, match="resize_mode"):
        instantiate(cfg.model)


def test_training_step_with_yolact_loss(small):
    """The config's real criterion runs on the model's predictions and gradients reach every part."""
    from detectron2.structures import BitMasks, Boxes, Instances

    model, _ = small
    model.train()
    try:
        masks = torch.zeros(2, 192, 192, dtype=torch.bool)
        masks[0, 20:150, 10:100] = True
        masks[1, 100:180, 120:190] = True
        inst = Instances((192, 192))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 100.0, 150.0], [120.0, 100.0, 190.0, 180.0]]))
        inst.gt_classes = torch.tensor([3, 7])
        inst.gt_masks = BitMasks(masks)
        img = torch.from_numpy(realish_image(192, 192).transpose(2, 0, 1).copy())
        losses = model([{"image": img, "instances": inst, "crowd_boxes": torch.zeros(0, 4)}])
        assert {"loss_box", "loss_cls", "loss_mask", "loss_semseg"} <= set(losses)
        total = sum(losses.values())
        assert torch.isfinite(total)
        model.zero_grad()
        total.backward()
        for name in ("head.cls_score.weight", "head.coef_pred.weight", "protonet.proto_pred.weight",
                     "semantic_seg_conv.weight", "backbone.lateral_convs.0.weight", "backbone.bottom_up.res5.0.conv1.weight"):
            grad = dict(model.named_parameters())[name].grad
            assert grad is not None and grad.abs().sum() > 0, name
    finally:
        model.eval()
        model.zero_grad()


def test_set_num_classes_reaches_every_part():
    from yolact_d2.modeling import set_num_classes

    cfg = LazyConfig.load("configs/yolact/yolact_R_50_FPN_550.py")
    set_num_classes(cfg.model, 3)
    model = instantiate(cfg.model)
    assert model.num_classes == model.head.num_classes == model.criterion.num_classes == 3
    assert model.head.cls_score.out_channels == 3 * 4 and model.semantic_seg_conv.out_channels == 3


def test_crowd_boxes_may_be_a_detectron2_boxes(small):
    """crowd_boxes as Detectron2 Boxes reach the criterion as their (M, 4) tensor and train exactly
    like it with the real loss (before: "too many dimensions")."""
    from detectron2.structures import BitMasks, Boxes, Instances

    model, _ = small
    inst = Instances((192, 192))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 100.0, 150.0]]))
    inst.gt_classes = torch.tensor([3])
    masks = torch.zeros(1, 192, 192, dtype=torch.bool)
    masks[0, 20:150, 10:100] = True
    inst.gt_masks = BitMasks(masks)
    img = torch.from_numpy(realish_image(192, 192).transpose(2, 0, 1).copy())
    crowd = torch.tensor([[110.0, 100.0, 190.0, 190.0], [0.0, 150.0, 60.0, 192.0]])
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, predictions, priors, targets):
            seen.append(targets[0]["crowd_boxes"])
            return {"loss_box": predictions["loc"].sum() * 0}

    def losses(crowd_boxes):
        torch.manual_seed(0)
        with torch.no_grad():
            out = model([{"image": img, "instances": inst, "crowd_boxes": crowd_boxes}])
        return {k: v.item() for k, v in out.items()}

    original = model.criterion
    model.train()
    try:
        as_tensor, as_boxes = losses(crowd), losses(Boxes(crowd))
        model.criterion = Recorder()
        losses(Boxes(crowd))
    finally:
        model.eval()
        model.criterion = original
    assert torch.equal(seen[0], crowd)
    assert as_boxes == as_tensor and {"loss_box", "loss_cls", "loss_mask"} <= set(as_tensor)
