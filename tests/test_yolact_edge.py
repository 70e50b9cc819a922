"""YolactEdge meta-architecture: the two-phase FPN, keyframes against Yolact, non-keyframes against
the keyframe they warp from, the interface errors."""
import copy
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from yolact_d2.checkpoint import convert_official_state_dict, synthetic_official_state_dict
from yolact_d2.modeling import Yolact, YolactEdge, set_num_classes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 160  # small network input: fast, priors follow the input size


def build(config, num_classes=None):
    cfg = LazyConfig.load(os.path.join(REPO, config))
    cfg.model.input_size = SIZE
    if num_classes is not None:
        set_num_classes(cfg.model, num_classes)
    return instantiate(cfg.model).eval()


@pytest.fixture(scope="module")
def video_model():
    model = build("configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py")
    official = synthetic_official_state_dict("yolact_edge_vid_resnet50_config", seed=1)
    state, _ = convert_official_state_dict(official, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict(state, strict=True)
    return model


def same_parts(cls, model, **overrides):
    """A `cls` model made of `model`'s own modules (same weights, nothing re-initialised)."""
    parts = dict(backbone=model.backbone, protonet=model.protonet, head=model.head,
                 prior_generator=model.prior_generator, num_classes=model.num_classes,
                 post_processor=model.post_processor, input_size=model.input_size)
    parts.update(overrides)
    return cls(**parts).eval()


def frames(n=2, seed=0, h=120, w=150):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "height": h, "width": w}
            for _ in range(n)]


def assert_same_instances(a, b, exact=True):
    assert len(a) == len(b) > 0
    assert torch.equal(a.pred_classes, b.pred_classes)
    if exact:
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.pred_masks, b.pred_masks)
    else:
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=0.05, rtol=0)
        inter = (a.pred_masks & b.pred_masks).flatten(1).sum(1).float()
        union = (a.pred_masks | b.pred_masks).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # both empty: equal
        assert iou.mean() > 0.999


@torch.no_grad()
def test_fpn_forward_is_phase2_of_phase1(video_model):
    fpn = video_model.backbone
    x = torch.randn(1, 3, 96, 112)
    merged, laterals = fpn.forward_phase1(fpn.bottom_up(x))
    assert [m.shape[-1] for m in merged] == [14, 7, 4] and laterals[0].shape == merged[0].shape
    assert torch.equal(laterals[-1], merged[-1])  # the coarsest level has nothing above it
    for a, b in zip(fpn(x).values(), fpn.forward_phase2(merged).values()):
        assert torch.equal(a, b)


@pytest.mark.slow
@torch.no_grad()
def test_keyframe_equals_yolact_on_the_same_weights(video_model):
    yolact = same_parts(Yolact, video_model)
    assert type(yolact) is Yolact
    inputs = frames(2)
    want = yolact.inference(inputs)
    got, state = video_model.inference_video(inputs, keyframe=True)  # a batch of 2 keyframes
    for g, w in zip(got, want):
        assert_same_instances(g["instances"], w["instances"], exact=True)
    assert state.input_size == (SIZE, SIZE) and state.image_size == (120, 150)
    assert len(state.features) == 3 and state.lateral.shape == (2, 256, 20, 20)
    # the image model (no flow net) gives the same keyframes too
    image_model = same_parts(YolactEdge, video_model)
    assert not image_model.is_video_model and video_model.is_video_model
    one = yolact.inference(inputs[:1])[0]["instances"]  # batch of 1 (oneDNN blocks batches differently)
    assert_same_instances(image_model.inference_video(inputs[:1])[0][0]["instances"], one)


def test_keyframe_of_the_image_config_equals_yolact_config():
    """The shipped configs: YolactEdge R50 (image) and YOLACT R50 hold the same keys and shapes."""
    edge = LazyConfig.load(os.path.join(REPO, "configs/yolact_edge/yolact_edge_R_50_FPN_550.py")).model
    yolact = LazyConfig.load(os.path.join(REPO, "configs/yolact/yolact_R_50_FPN_550.py")).model
    assert edge._target_ is YolactEdge and edge.flow_net is None and edge.spa is None
    del edge["flow_net"], edge["spa"], edge["_target_"], yolact["_target_"]
    assert LazyConfig.to_py(edge) == LazyConfig.to_py(yolact)


def identity_transfer(model):
    """Zero flow, scale 1, bias 0, SPA refinements 0: a warped frame must reproduce its keyframe."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for pred in (model.flow_net.pred2, model.flow_net.pred3):
            pred.flow.weight.zero_()
            pred.scale.weight.zero_()
            pred.scale.bias.fill_(1.0)
            pred.bias.weight.zero_()
            pred.bias.bias.zero_()
        for refine in model.spa.refine_convs if model.spa is not None else ():  # small CPU video model: no SPA
            refine[0].weight.zero_()
            refine[0].bias.zero_()
    return model


@pytest.mark.slow
@torch.no_grad()
def test_identity_transfer_reproduces_the_keyframe(video_model):
    model = identity_transfer(video_model)
    inputs = frames(1, seed=4)
    key, state = model.inference_video(inputs, keyframe=True)
    warped, same = model.inference_video(inputs, state, keyframe=False)
    assert same is state  # always warps from the last keyframe
    # features: P4/P5 warped by zero flow and P3 rebuilt from them equal the keyframe's phase-1 maps
    images = model.preprocess_image(inputs).tensor
    feats_key, _ = model.keyframe_features(images)
    feats_warp = model.warped_features(images, state)
    for name in feats_key:
        torch.testing.assert_close(feats_warp[name], feats_key[name], atol=1e-4, rtol=1e-4)
    assert_same_instances(warped[0]["instances"], key[0]["instances"], exact=False)


@torch.no_grad()
def test_mobilenet_v2_runs_in_video_mode():
    """Beyond official (MobileNetV2 only on images there): the partial backbone stops at stage3."""
    torch.manual_seed(0)
    model = identity_transfer(build("configs/yolact_edge/yolact_edge_vid_mobilenetv2_FPN_550.py"))
    assert model.is_video_model and model.backbone.in_features[0] == "stage3"
    images = model.preprocess_image(frames(1, seed=7)).tensor
    feats_key, state = model.keyframe_features(images)
    assert state.lateral.shape == (1, 256, 20, 20)
    feats_warp = model.warped_features(images, state)
    for name in feats_key:
        torch.testing.assert_close(feats_warp[name], feats_key[name], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_warped_frames_move_with_the_flow(video_model):
    """Real (seeded) flow weights: a non-keyframe differs from its keyframe but stays a valid result."""
    inputs = frames(2, seed=5)
    _, state = video_model.inference_video(inputs[:1], keyframe=True)
    warped, _ = video_model.inference_video(inputs[1:], state, keyframe=False)
    key, _ = video_model.inference_video(inputs[1:], keyframe=True)
    a, b = warped[0]["instances"], key[0]["instances"]
    assert len(a) > 0 and a.pred_masks.shape[-2:] == (120, 150)
    assert not torch.equal(a.scores, b.scores)


@pytest.mark.slow
@torch.no_grad()
def test_optimized_model_keeps_video_results(video_model):
    from yolact_d2.deploy.optimize import optimize_for_inference

    inputs = frames(2, seed=6)
    _, state = video_model.inference_video(inputs[:1])
    want, _ = video_model.inference_video(inputs[1:], state, keyframe=False)
    fast = optimize_for_inference(copy.deepcopy(video_model))
    _, fast_state = fast.inference_video(inputs[:1])
    got, _ = fast.inference_video(inputs[1:], fast_state, keyframe=False)
    assert_same_instances(got[0]["instances"], want[0]["instances"], exact=False)


def test_interface_errors(video_model):
    inputs = frames(1)
    with pytest.raises(ValueError, match="needs the KeyframeState of a keyframe"):
        video_model.inference_video(inputs, None, keyframe=False)
    _, state = video_model.inference_video(inputs)
    state.input_size = (550, 550)
    with pytest.raises(ValueError, match=r"input is \(160, 160\) but the keyframe's was \(550, 550\)"):
        video_model.inference_video(inputs, state, keyframe=False)
    image_model = same_parts(YolactEdge, video_model)
    _, image_state = image_model.inference_video(inputs)
    with pytest.raises(ValueError, match="image model.*configs/yolact_edge/yolact_edge_vid_"):
        image_model.inference_video(inputs, image_state, keyframe=False)
    with pytest.raises(ValueError, match="needs a flow_net too"):
        same_parts(YolactEdge, video_model, spa=video_model.spa)
    assert YolactEdge.__mro__[1] is Yolact
