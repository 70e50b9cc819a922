"""YOLACT++ end to end: configs, priors, official checkpoint conversion, mask re-scoring at
inference, and a short CPU training run."""
import itertools
import math
from pathlib import Path

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.structures import BitMasks, Boxes, Instances

import yolact_d2  # noqa: F401  (registers)
from yolact_d2.checkpoint import (
    ConversionError,
    convert_official_state_dict,
    default_config_for,
    detect_variant,
    synthetic_official_state_dict,
)
from yolact_d2.modeling import set_head_width, set_num_classes
from yolact_d2.modeling.backbone.deform_resnet import ModulatedDeformConv2d
from yolact_d2.modeling.maskiou import FastMaskIoUNet

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "R50": REPO / "configs/yolact/yolact_plus_R_50_FPN_550.py",
    "R101": REPO / "configs/yolact/yolact_plus_R_101_FPN_550.py",
    "RegNet": REPO / "configs/yolact/yolact_plus_regnety_4gf_FPN_550.py",
}
SIZES_550 = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]


def _model_cfg(name, num_classes=None, **overrides):
    cfg = LazyConfig.load(str(CONFIGS[name]))
    if num_classes is not None:
        set_num_classes(cfg.model, num_classes)
    for k, v in overrides.items():
        setattr(cfg.model, k, v)
    return cfg.model


def _tiny_plus_cfg(num_classes=3, input_size=128, norm="BN"):
    """The R50++ config shrunk for CPU tests: every ++ part kept (deformable blocks, 9 priors per
    location, mask re-scoring), one block per stage, 64-channel FPN, 16 prototypes, a 3-conv
    mask-IoU net (the official 5 convs need >= 63 px prototypes, i.e. >= ~256 px inputs)."""
    cfg = _model_cfg("R50", num_classes=num_classes, input_size=input_size)
    cfg.backbone.bottom_up.num_blocks_per_stage = (1, 1, 1, 1)
    cfg.backbone.bottom_up.norm = norm
    width, protos = 64, 16
    set_head_width(cfg, width, protos)
    cfg.mask_rescoring.channels = (8, 16, 32)
    return cfg


def _official_plus_priors(sizes, max_size=550):
    """Official make_priors with yolact_plus_base's backbone settings, as plain floats."""
    scales = [[i * 2 ** (j / 3.0) for j in range(3)] for i in [24, 48, 96, 192, 384]]
    data = []
    for (conv_h, conv_w), level_scales in zip(sizes, scales):
        for j, i in itertools.product(range(conv_h), range(conv_w)):
            for scale in level_scales:
                for ar in (1, 1 / 2, 2):
                    r = math.sqrt(ar)  # preapply_sqrt False
                    data += [(i + 0.5) / conv_w, (j + 0.5) / conv_h, scale * r / max_size, scale / r / max_size]
    return torch.tensor(data, dtype=torch.float32).view(-1, 4)


# ------------------------------------------------------------------------------------ priors
@pytest.mark.parametrize("name", ["R50", "R101", "RegNet"])
def test_config_priors_are_official_plus_priors(name):
    gen = instantiate(_model_cfg(name).prior_generator)
    priors = gen(SIZES_550, (550, 550))
    assert priors.shape == (57744, 4)
    assert torch.equal(priors, _official_plus_priors(SIZES_550))
    # P3, first cell, second scale (24 * 2^(1/3)), ratio 1/2: w = s*sqrt(.5)/550, h = s/sqrt(.5)/550
    s = 24 * 2 ** (1 / 3)
    assert priors[4].tolist() == pytest.approx([0.5 / 69, 0.5 / 69, s * 0.5**0.5 / 550, s / 0.5**0.5 / 550], rel=1e-6)
    assert gen.num_anchors_per_location == [9] * 5


# ------------------------------------------------------------------------------------ conversion
@pytest.mark.slow
@pytest.mark.parametrize(
    "official_cfg,name,num_dcn",
    [("yolact_plus_resnet50_config", "R50", 13), ("yolact_plus_base_config", "R101", 11)],
)
def test_convert_synthetic_official_plus_checkpoint(official_cfg, name, num_dcn):
    official = synthetic_official_state_dict(official_cfg, seed=1)
    info = detect_variant(official)
    assert info["plus"] and info["num_anchors"] == 9 and info["num_classes"] == 80
    assert (REPO / default_config_for(info)) == CONFIGS[name]
    model = instantiate(_model_cfg(name))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted, summary = convert_official_state_dict(official, expected)
    assert set(converted) == set(expected)  # every model key filled, nothing extra
    model.load_state_dict(converted, strict=True)
    dropped = [k for k in official if k not in summary.dropped]
    assert len(dropped) == summary.mapped == len(expected)
    assert all(k.endswith("num_batches_tracked") for k in summary.dropped)
    # values land where they belong
    bb = model.backbone.bottom_up
    assert torch.equal(bb.res3[0].conv2.conv_offset_mask.weight, official["backbone.layers.1.0.conv2.conv_offset_mask.weight"])
    assert torch.equal(bb.res5[0].conv2.bias, official["backbone.layers.3.0.conv2.bias"])
    assert torch.equal(bb.res4[3].conv2.norm.running_var, official["backbone.layers.2.3.bn2.running_var"])
    assert torch.equal(model.mask_rescoring.convs[10].weight, official["maskiou_net.maskiou_net.10.weight"])
    assert torch.equal(model.mask_rescoring.convs[4].bias, official["maskiou_net.maskiou_net.4.bias"])
    dcn = [m for m in bb.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert len(dcn) == num_dcn == sum(k.endswith("conv_offset_mask.weight") for k in official)

    # strictness: missing offset key, unknown key, wrong mask-IoU shape
    broken = dict(official)
    broken.pop("backbone.layers.2.0.conv2.conv_offset_mask.bias")
    with pytest.raises(ConversionError, match="res4.0.conv2.conv_offset_mask.bias"):
        convert_official_state_dict(broken, expected)
    broken = dict(official)
    broken["maskiou_net.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="maskiou_net.extra.weight"):
        convert_official_state_dict(broken, expected)
    broken = dict(official)
    broken["maskiou_net.maskiou_net.10.weight"] = torch.zeros(90, 128, 1, 1)
    with pytest.raises(ConversionError, match=r"mask_rescoring.convs.10.weight.*\[80, 128, 1, 1\]"):
        convert_official_state_dict(broken, expected)


def test_plain_yolact_checkpoint_does_not_fit_plus_model():
    """v1 R50 weights into the R50++ model: the deformable offset convs are missing -> clear error."""
    official = synthetic_official_state_dict("yolact_resnet50_config", seed=0)
    model = instantiate(_model_cfg("R50"))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(ConversionError):
        convert_official_state_dict(official, expected)


# ------------------------------------------------------------------------------------ inference
def _constant_rescorer(num_classes, per_class_iou):
    """Mask-IoU net whose prediction ignores the mask: class layer weights 0, bias = IoU."""
    net = FastMaskIoUNet(num_classes, channels=(8, 16, 32))
    with torch.no_grad():
        net.convs[-2].weight.zero_()
        net.convs[-2].bias.copy_(torch.as_tensor(per_class_iou))
    return net


@pytest.mark.slow
def test_rescoring_scores_masks_and_keeps_class_scores_for_boxes():
    """Official YOLACT++ (rescore_bbox=False): the model with the mask-IoU net gives the same
    detections and `scores` as without it (boxes ranked by class score), plus `mask_scores` =
    class score x predicted IoU of its class."""
    torch.manual_seed(0)
    num_classes = 4
    model = instantiate(_tiny_plus_cfg(num_classes, input_size=160))
    model.head.cls_score.bias.data.normal_(0, 3)  # some priors above the 0.05 confidence
    model.mask_rescoring = None
    model.eval()
    image = {"image": torch.randint(0, 256, (3, 120, 150), dtype=torch.uint8), "height": 120, "width": 150}
    plain = model([image])[0]["instances"]
    assert len(plain) > 5
    iou = torch.tensor([0.9, 0.25, 0.5, 0.0])
    model.mask_rescoring = _constant_rescorer(num_classes, iou)
    plus = model([image])[0]["instances"]
    # same detections (boxes, classes, masks, order) and box scores; mask score = score x IoU
    assert torch.equal(plus.pred_classes, plain.pred_classes)
    assert torch.equal(plus.pred_boxes.tensor, plain.pred_boxes.tensor)
    assert torch.equal(plus.pred_masks, plain.pred_masks)
    assert torch.equal(plus.scores, plain.scores)
    assert torch.all(plus.scores[:-1] >= plus.scores[1:])  # sorted by the box score
    assert not plain.has("mask_scores")
    torch.testing.assert_close(plus.mask_scores, plain.scores * iou[plain.pred_classes])


# ------------------------------------------------------------------------------------ training
def _target(h, w, boxes, classes):
    """Instances with box-filling masks, every second one with its left half only."""
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor(classes)
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1 : (x2 if i % 2 == 0 else (x1 + x2) // 2)] = True
    inst.gt_masks = BitMasks(masks)
    return inst


@pytest.mark.slow
def test_short_cpu_training_lowers_loss_and_trains_plus_parts():
    torch.manual_seed(0)
    size = 128
    model = instantiate(_tiny_plus_cfg(num_classes=3, input_size=size, norm="BN"))  # from scratch: BN
    model.train()
    g = torch.Generator().manual_seed(0)
    batch = []
    for boxes, classes in [([[10, 15, 70, 100], [75, 20, 120, 60]], [0, 2]), ([[30, 30, 100, 115]], [1])]:
        batch.append({
            "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
            "instances": _target(size, size, boxes, classes),
            "crowd_boxes": torch.zeros(0, 4),
        })
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    history = []
    offset_w = model.backbone.bottom_up.res3[0].conv2.conv_offset_mask.weight
    for it in range(10):
        losses = model(batch)
        assert set(losses) == {"loss_box", "loss_cls", "loss_mask", "loss_semseg", "loss_maskiou"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        if it == 0:
            # the ++ parts learn: deformable offsets and the mask-IoU net get gradients
            assert offset_w.grad is not None and offset_w.grad.abs().sum() > 0
            assert model.mask_rescoring.convs[0].weight.grad.abs().sum() > 0
        opt.step()
        history.append({k: round(v.item(), 4) for k, v in losses.items()})
    first, last = sum(history[0].values()), sum(history[-1].values())
    assert last < 0.75 * first, history
    assert offset_w.abs().sum() > 0  # zero-initialised offsets moved
