"""yolact_d2.VideoPredictor: the keyframe schedule, its state, its checks, optimize=True, and the
adaptive rule's measures.

Oracles: the plain YolactEdge model called directly (`inference_video` with the keyframes the
official rule frame_idx % N == 0 names, written out by hand), Yolact's image inference for
keyframes, hand-computed shifts for the motion / residual measures.
"""
import math
import os

import cv2
import numpy as np
import pytest
import torch

import inference_fixtures as fx
import test_predictor as tp
from yolact_d2 import AdaptiveKeyframes, VideoPredictor
from yolact_d2.keyframe_schedule import warp_measures
from yolact_d2.modeling.feature_transfer import pixel_shift_to_flow

EDGE = os.path.join(fx.REPO, "configs", "yolact_edge")
VID_R18 = os.path.join(EDGE, "yolact_edge_vid_R_18_FPN_550.py")
OPTS = ["model.input_size=128"]  # C3/C4/C5 grids 16/8/4: the flow net's 1/2 and 1/4 scales fit


def moving_frames(n, height=96, width=128, step=3, seed=0):
    """A seeded sequence: filled circles that move `step` px right (and step/2 down) per frame."""
    rng = np.random.RandomState(seed)
    shapes = [(int(rng.randint(0, width)), int(rng.randint(0, height)), int(rng.randint(8, 30)),
               tuple(int(c) for c in rng.randint(0, 255, size=3))) for _ in range(5)]
    frames = []
    for t in range(n):
        img = np.empty((height, width, 3), np.uint8)
        img[:] = (90, 110, 130)
        for x, y, r, color in shapes:
            cv2.circle(img, (x + step * t, y + (step * t) // 2), r, color, -1)
        frames.append(img)
    return frames


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("w") / "edge_vid_r18.pth")
    return fx.write_checkpoint(path, seed=0, config=VID_R18, opts=OPTS)


@pytest.fixture(scope="module")
def plain_model(weights):
    model = fx.build_model(OPTS, config=VID_R18)
    model.load_state_dict(torch.load(weights)["model"])
    return model


def as_input(frame):
    return {"image": torch.as_tensor(frame.transpose(2, 0, 1).copy()), "height": frame.shape[0],
            "width": frame.shape[1]}


def assert_equal_instances(got, want):
    assert len(got) == len(want) > 0
    for field in ("pred_classes", "scores", "pred_masks"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)


def test_fixed_interval_equals_model(weights, plain_model):
    """Keyframes at frames 0, 3, 6 (interval 3); every result equals the model's own
    inference_video from the last keyframe; keyframes equal Yolact's image inference."""
    vp = VideoPredictor(VID_R18, weights, device="cpu", keyframe_interval=3, optimize=False, opts=OPTS)
    frames = moving_frames(7)
    expected_key = [True, False, False, True, False, False, True]
    state = None
    with torch.no_grad():
        for i, (frame, key) in enumerate(zip(frames, expected_key)):
            got = vp(frame)
            assert vp.last_was_keyframe == key, i
            assert (vp.last_reason is None) == (not key)
            want, new_state = plain_model.inference_video([as_input(frame)], state, keyframe=key)
            if key:
                state = new_state
                assert_equal_instances(got, plain_model([as_input(frame)])[0]["instances"])
            else:
                assert new_state is state  # always warped from the keyframe, not the previous frame
            assert_equal_instances(got, want[0]["instances"])
            assert got.image_size == (96, 128) and got.pred_masks.shape[1:] == (96, 128)
    assert vp.frame_index == 7 and vp.num_keyframes == 3
    assert vp.last_reason == "interval 3"


def test_forcing_reset_and_frame_size(weights):
    vp = VideoPredictor(VID_R18, weights, device="cpu", opts=OPTS)  # interval 5, optimized
    a, b = moving_frames(2)
    with pytest.raises(ValueError, match="keyframe=False asks for a warped pass but there is no keyframe yet"):
        vp(a, keyframe=False)
    vp(a)
    assert vp.last_was_keyframe and vp.last_reason == "first frame"
    vp(b, keyframe=False)
    assert not vp.last_was_keyframe
    vp(b, keyframe=True)
    assert vp.last_was_keyframe and vp.last_reason == "forced"
    vp(a)
    assert not vp.last_was_keyframe
    big = cv2.resize(a, (160, 120))
    with pytest.raises(ValueError, match="this frame is 120x160 and the keyframe was 96x128"):
        vp(big, keyframe=False)
    out = vp(big)  # another size: a new keyframe by itself
    assert vp.last_was_keyframe and vp.last_reason.startswith("frame size 120x160")
    assert out.image_size == (120, 160)
    vp.reset()
    assert vp.state is None and vp.frame_index == 0 and vp.num_keyframes == 0
    with pytest.raises(ValueError, match="no keyframe yet"):
        vp(a, keyframe=False)
    vp(a)
    assert vp.last_was_keyframe and vp.num_keyframes == 1


def test_bad_config_frame_and_arguments(weights, tmp_path):
    with pytest.raises(ValueError, match=r"model \(YolactEdge\) is not a YolactEdge video model.*Predictor"):
        VideoPredictor(os.path.join(EDGE, "yolact_edge_R_18_FPN_550.py"), device="cpu", opts=OPTS)
    with pytest.raises(ValueError, match=r"model \(Yolact\) is not a YolactEdge video model"):
        VideoPredictor(fx.R50_CONFIG, str(tmp_path / "never_read.pth"), device="cpu")  # checked before loading
    with pytest.raises(ValueError, match="keyframe_interval must be an integer >= 1"):
        VideoPredictor(VID_R18, weights, device="cpu", keyframe_interval=0, opts=OPTS)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['motion'\]"):
        VideoPredictor(VID_R18, weights, device="cpu", adaptive={"motion": 2.0}, opts=OPTS)
    with pytest.raises(ValueError, match="set max_motion"):
        AdaptiveKeyframes()
    image_weights = fx.write_checkpoint(str(tmp_path / "image.pth"), config=os.path.join(EDGE, "yolact_edge_R_18_FPN_550.py"),
                                        opts=OPTS, num_classes=40)
    with pytest.raises(ValueError, match=r"(?s)Missing in the checkpoint: flow_net\..*image-model checkpoint"):
        VideoPredictor(VID_R18, image_weights, device="cpu", opts=OPTS)
    vp = VideoPredictor(VID_R18, weights, device="cpu", opts=OPTS)
    frame = moving_frames(1)[0]
    with pytest.raises(TypeError, match="VideoPredictor: frame has dtype float32"):
        vp(frame.astype(np.float32))
    with pytest.raises(ValueError, match=r"VideoPredictor: frame has 4 channels"):
        vp(np.zeros((96, 128, 4), np.uint8))
    with pytest.raises(TypeError, match="one frame per call"):
        vp([frame, frame])
    with pytest.raises(TypeError, match="keyframe must be None, True or False"):
        vp(frame, keyframe=1)
    assert vp.frame_index == 0 and vp.state is None  # rejected frames leave no trace


@pytest.mark.slow
def test_optimized_equals_plain(weights):
    """optimize=True (BN folded, head fused, oneDNN convs, flow net / SPA convs rewritten) gives
    the plain model's detections on a keyframe and on warped frames, within Predictor's tolerances."""
    opt = VideoPredictor(VID_R18, weights, device="cpu", opts=OPTS)
    plain = VideoPredictor(VID_R18, weights, device="cpu", optimize=False, opts=OPTS)
    assert type(opt.model.head).__name__ == "FusedYolactHead"
    assert any(type(m).__name__ == "MkldnnConv2d" for m in opt.model.flow_net.modules()) or not hasattr(
        torch.ops.mkldnn, "_convolution_pointwise"
    )
    for frame in moving_frames(3, step=4):
        got, want = opt(frame), plain(frame)
        assert opt.last_was_keyframe == plain.last_was_keyframe
        tp.assert_same_detections(got, want)


def test_warp_measures_of_a_known_shift():
    """A map shifted by exactly 2 px left/1 px up: the matching flow gives residual ~0 and the
    motion in network-input pixels; no flow gives the residual of the unaligned maps."""
    torch.manual_seed(0)
    h, w = 12, 16
    key = torch.randn(1, 8, h, w)
    current = torch.zeros_like(key)
    current[..., : h - 1, : w - 2] = key[..., 1:, 2:]  # current(y, x) = key(y + 1, x + 2), zeros outside
    fx_, fy_ = pixel_shift_to_flow(2.0, 1.0, (h, w))
    flow = torch.tensor([fx_, fy_]).view(1, 2, 1, 1).expand(1, 2, h, w).contiguous()
    m = warp_measures(current, key, flow, input_size=(96, 128))  # network input 8x the grid
    assert m["residual"] < 1e-5
    assert m["motion"] == pytest.approx(math.hypot(2 * 128 / w, 1 * 96 / h), rel=1e-5)
    still = warp_measures(current, key, torch.zeros_like(flow), input_size=(96, 128))
    want = torch.linalg.vector_norm(current - key) / torch.linalg.vector_norm(current)
    assert still["motion"] == 0 and still["residual"] == pytest.approx(float(want), rel=1e-5)


def test_adaptive_schedule(weights, plain_model):
    frames = moving_frames(6)
    # thresholds never reached: keyframes only at the cap (max_interval 4)
    vp = VideoPredictor(VID_R18, weights, device="cpu", optimize=False, opts=OPTS,
                        adaptive=AdaptiveKeyframes(max_motion=math.inf, max_interval=4))
    flags = []
    for frame in frames:
        vp(frame)
        flags.append(vp.last_was_keyframe)
    assert flags == [True, False, False, False, True, False]
    # the measures are those of the model's own flow on that frame (restated step by step)
    m, fpn = plain_model, plain_model.backbone
    with torch.no_grad():
        images = m.preprocess_image([as_input(frames[5])])
        _, key_state = m.keyframe_features(m.preprocess_image([as_input(frames[4])]).tensor)
        c3 = fpn.bottom_up(images.tensor)[fpn.in_features[0]]
        current = m.flow_net.reduce(fpn.lateral_convs[0](c3))
        flow = m.flow_net(current, key_state.flow_feature)[-1][0]
        want = warp_measures(current, key_state.flow_feature, flow, (128, 128))
    assert vp.last_measures["motion"] == pytest.approx(want["motion"], rel=1e-5)
    assert vp.last_measures["residual"] == pytest.approx(want["residual"], rel=1e-5)
    # a zero motion threshold: every warped frame is redone as a keyframe, with the reason named
    vp = VideoPredictor(VID_R18, weights, device="cpu", optimize=False, opts=OPTS, adaptive={"max_motion": 0.0})
    for frame in frames[:3]:
        out = vp(frame)
        assert vp.last_was_keyframe
    assert vp.last_reason.startswith("motion ") and vp.num_keyframes == 3
    assert_equal_instances(out, plain_model([as_input(frames[2])])[0]["instances"])
    # forced warps are never overruled by the adaptive rule
    vp(frames[3], keyframe=False)
    assert not vp.last_was_keyframe


@pytest.mark.parametrize("depth", [18, 34])
def test_small_resnet_configs(depth):
    """The R18/R34 configs: the image model has torchvision's C3-C5 widths and no flow net; the video
    model runs a keyframe and a warped frame (its partial backbone stops at the BasicBlock res3)."""
    from detectron2.config import LazyConfig, instantiate

    image_cfg = LazyConfig.load(os.path.join(EDGE, f"yolact_edge_R_{depth}_FPN_550.py"))
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(image_cfg.keys())
    image_model = instantiate(image_cfg.model)
    assert not image_model.is_video_model and image_model.num_classes == 80
    shapes = image_model.backbone.bottom_up.output_shape()
    assert [shapes[f].channels for f in ("res3", "res4", "res5")] == [128, 256, 512]
    torch.manual_seed(depth)
    vp = VideoPredictor(os.path.join(EDGE, f"yolact_edge_vid_R_{depth}_FPN_550.py"), device="cpu", opts=OPTS)
    assert vp.model.num_classes == 40 and len(vp.model.backbone.bottom_up.res4) == {18: 2, 34: 6}[depth]
    a, b = moving_frames(2)
    vp(a)
    out = vp(b)
    assert vp.num_keyframes == 1 and not vp.last_was_keyframe and out.image_size == (96, 128)
