"""yacs configs: get_cfg() + add_yolact_config + configs/yacs/*.yaml build the LazyConfig models,
and Detectron2's DefaultPredictor / DefaultTrainer run them.

Oracles: the LazyConfig model of the same name (configs/yolact/*.py, built without any yacs
code): same modules and attributes, state-dict keys/shapes and buffers, and identical detections
with the same weights; yolact_d2.Predictor for DefaultPredictor.
"""
import numpy as np
import pytest
import torch
from torch import nn

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.modeling import build_model

import yolact_d2
from inference_fixtures import R50_CONFIG, SMALL_INPUT, SMALL_OPTS, test_image, write_checkpoint
from yacs_fixtures import REPO, tiny_shapes_cfg, yacs_cfg


def lazy_model(name, input_size):
    """The model of configs/yolact/<name>.py: each configs/yacs/<name>.yaml has a namesake there."""
    cfg = LazyConfig.load(str(REPO / "configs/yolact" / f"{name}.py"))
    cfg.model.input_size = input_size
    return instantiate(cfg.model)


def _attrs(obj):
    """An object's own settings: public attributes that are not tensors or submodules."""
    out = {}
    for k, v in vars(obj).items():
        if k.startswith("_") or k == "training" or isinstance(v, (torch.Tensor, nn.Module)):
            continue
        if isinstance(v, (list, tuple)) and any(isinstance(e, nn.Module) for e in v):
            continue  # e.g. ResNet.stages: the same modules, compared through named_modules()
        out[k] = _attrs(v) if hasattr(v, "__dict__") and not isinstance(v, type) else v
    return out


def structure(model):
    return [(name, type(m).__qualname__, _attrs(m)) for name, m in model.named_modules()]


@torch.no_grad()
def _confident_weights(model, seed=0):
    """The model's state dict with seeded weights and class logits that give detections."""
    torch.manual_seed(seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    head = model.head
    bias = sd["head.cls_score.bias"].view(head.num_anchors, head.num_classes + 1)
    bias.fill_(-3.0)
    bias[:, 0] = 0.0
    bias[:, 1], bias[:, 3] = 1.5, 2.0
    sd["head.cls_score.weight"] *= 0.05
    sd["head.bbox_pred.weight"] *= 0.01  # box deltas near 0: boxes near their priors, no exp overflow
    return sd


def _assert_same_instances(a, b):
    assert len(a) > 0 and len(a) == len(b)
    for field in ("pred_classes", "scores", "pred_masks") + (("mask_scores",) if a.has("mask_scores") else ()):
        assert torch.equal(a.get(field), b.get(field)), field
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.isfinite(a.pred_boxes.tensor).all()


# (yaml, network input: small for CPU speed, the architecture unchanged; >= 256 for the ++
# mask-IoU net, whose 5 unpadded stride-2 convs need 64 px prototypes; run a forward pass?)
CASES = [
    ("yolact_R_50_FPN_550", SMALL_INPUT, True),
    ("yolact_R_101_FPN_550", SMALL_INPUT, True),
    ("yolact_plus_R_50_FPN_550", 256, True),
    ("yolact_plus_R_101_FPN_550", 256, False),
    ("yolact_D_53_FPN_550", SMALL_INPUT, False),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,input_size,run", CASES, ids=[c[0] for c in CASES])
def test_yacs_model_equals_lazyconfig_model(name, input_size, run):
    cfg = yacs_cfg(name, ["MODEL.YOLACT.INPUT_SIZE", input_size])
    ours = build_model(cfg).eval()
    ref = lazy_model(name, input_size).eval()
    assert type(ours) is type(ref) is yolact_d2.modeling.Yolact
    assert structure(ours) == structure(ref)  # every module, its type and its settings
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ref_buffers = dict(ref.named_buffers())  # includes non-persistent ones (pixel mean / std)
    assert all(torch.equal(v, ref_buffers[k]) for k, v in ours.named_buffers()) and len(ref_buffers)
    if not run:
        return
    weights = _confident_weights(ref)
    ref.load_state_dict(weights)
    ours.load_state_dict(weights)
    image = {"image": torch.from_numpy(test_image(120, 160).transpose(2, 0, 1).copy()), "height": 120, "width": 160}
    _assert_same_instances(ours([image])[0]["instances"], ref([image])[0]["instances"])


def test_plain_get_cfg_is_the_official_r50():
    """The issue's recipe without a yaml: get_cfg() + add_yolact_config + META_ARCHITECTURE."""
    cfg = get_cfg()
    yolact_d2.add_yolact_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "Yolact"
    cfg.MODEL.DEVICE = "cpu"
    assert structure(build_model(cfg)) == structure(lazy_model("yolact_R_50_FPN_550", 550))
    # Yolact(cfg) is the same as build_model(cfg); the keyword constructor still works (LazyConfig).
    assert isinstance(yolact_d2.modeling.Yolact(cfg), yolact_d2.modeling.Yolact)


def test_config_errors_name_the_problem():
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "Yolact"
    with pytest.raises(KeyError, match="add_yolact_config"):
        build_model(cfg)
    yolact_d2.add_yolact_config(cfg)
    with pytest.raises(ValueError, match="once"):
        yolact_d2.add_yolact_config(cfg)
    cfg.MODEL.YOLACT.ANCHOR.SCALES = [[24.0], [48.0], [96.0], [192.0], [384.0, 500.0]]
    with pytest.raises(ValueError, match=r"same number of priors on every level.*\[3, 6\]"):
        build_model(cfg)


@pytest.mark.slow
def test_default_predictor_equals_yolact_predictor(tmp_path):
    """DefaultPredictor (DetectionCheckpointer load, INPUT.MIN_SIZE_TEST=0: no resize of its own)
    gives our Predictor's detections on the same weights and image."""
    ckpt = str(write_checkpoint(tmp_path / "model.pth"))
    cfg = yacs_cfg("yolact_R_50_FPN_550", ["MODEL.YOLACT.INPUT_SIZE", SMALL_INPUT, "MODEL.WEIGHTS", ckpt])
    image = test_image(120, 160)
    ours = yolact_d2.Predictor(R50_CONFIG, ckpt, device="cpu", opts=SMALL_OPTS, optimize=False)(image)
    d2 = DefaultPredictor(cfg)(image)["instances"]
    assert len(ours) > 0 and len(d2) == len(ours)
    assert torch.equal(d2.pred_classes, ours.pred_classes)
    torch.testing.assert_close(d2.scores, ours.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(d2.pred_boxes.tensor, ours.pred_boxes.tensor, rtol=0, atol=1.0)
    inter = (d2.pred_masks & ours.pred_masks).sum((1, 2)).float()
    union = (d2.pred_masks | ours.pred_masks).sum((1, 2)).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # both empty: same
    assert iou.min() >= 0.99


@pytest.mark.slow
def test_default_trainer_trains_on_shapes(tmp_path):
    """DefaultTrainer(cfg) with Detectron2's own DatasetMapper (bitmask gt_masks, crowds dropped):
    a few iterations of a tiny YOLACT (ResNet-18, 16-wide FPN, 64 px) on the shapes set, finite and
    decreasing loss."""
    # The whole 4-image set in every batch, no flip: the same batch each iteration, so the loss
    # must go down (no sampling noise).
    cfg = tiny_shapes_cfg(tmp_path, "shapes_yacs", opts=["INPUT.RANDOM_FLIP", "none", "SOLVER.MAX_ITER", 10])
    torch.manual_seed(0)
    trainer = DefaultTrainer(cfg)
    trainer.train()
    history = trainer.storage.history("total_loss").values()
    losses = [v for v, _ in history]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    for term in ("loss_box", "loss_cls", "loss_mask", "loss_semseg"):
        assert np.isfinite(trainer.storage.history(term).latest())
