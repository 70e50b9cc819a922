"""yolact_d2.deploy.precision: precision checks (CPU capability simulated absent), the bf16
network cast, the oneDNN bf16 conv, and Predictor / VideoPredictor at bf16 against fp32.

Oracles: torch's own CPU probes for the flag reader; F.conv2d in float32 on the same
bf16-rounded operands for the oneDNN bf16 conv; the fp32 model called directly (the exact fp32
path) and the fp32 Predictor's detections, matched by box IoU, for bf16.
"""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

import inference_fixtures as fx
from detectron2.structures import pairwise_iou
from yolact_d2 import Predictor, VideoPredictor
from yolact_d2.deploy import precision as prec
from yolact_d2.deploy.optimize import MkldnnConv2d, optimize_for_inference
from test_predictor import image, weights  # noqa: F401 - the seeded R50 checkpoint and image fixtures

BF16_PROBLEM = prec.bf16_cpu_problem(prec.cpu_flags(), torch.backends.mkldnn.is_available())
needs_bf16 = pytest.mark.skipif(BF16_PROBLEM is not None, reason=f"no fast bf16 here: {BF16_PROBLEM}")

# bf16 keeps 8 mantissa bits: ~0.4% relative error per rounding; through the R50 network the
# top detections' scores moved by < 0.005 here (seeded weights). Stated bounds, with margin:
SCORE_TOL = 0.02
MIN_BOX_IOU = 0.9
# Seeded (untrained) prototypes leave many pixels near the 0.5 mask threshold, so a bf16 rounding
# flips more of them than it would with trained weights (measured here: IoU 0.63..0.97, mean 0.9).
MEAN_MASK_IOU = 0.85
MIN_MASK_IOU = 0.55
TOP = 10  # the fp32 Predictor's top detections looked for again at bf16
MIN_TWINS = 8  # of them found (same class, box IoU >= MIN_BOX_IOU)


# ------------------------------------------------------------------------------ checks
def test_cpu_flags_agree_with_torch_probe():
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is None or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("needs /proc/cpuinfo and torch.cpu._is_avx512_bf16_supported to compare")
    assert ("avx512_bf16" in prec.cpu_flags()) == bool(probe())


@pytest.mark.parametrize(
    "flags, ok",
    [
        ({"sse2", "avx2", "avx512f"}, False),
        ({"sse2", "avx2"}, False),
        ({"avx512f", "avx512_bf16"}, True),
        ({"amx_tile", "amx_bf16"}, True),
    ],
)
def test_bf16_refused_without_instructions(monkeypatch, flags, ok):
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset(flags))
    if ok:
        assert prec.check_precision("bf16", "cpu") == "bf16"
        return
    with pytest.raises(ValueError) as e:
        prec.check_precision("bf16", "cpu")
    msg = str(e.value)
    assert "avx512_bf16" in msg and "amx_bf16" in msg and "fp32" in msg
    assert ("AVX512F present" in msg) == ("avx512f" in flags)


def test_bf16_refused_without_onednn():
    assert "oneDNN" in prec.bf16_cpu_problem(frozenset({"avx512_bf16"}), mkldnn_available=False)


def test_predictor_reports_missing_bf16_before_building(monkeypatch):
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ValueError, match="avx512_bf16"):
        Predictor(fx.R50_CONFIG, "no-such-file.pth", device="cpu", precision="bf16")


@pytest.mark.parametrize(
    "precision, device, exc, words",
    [
        ("int8", "cuda", ValueError, "int8'.*CPU"),  # int8: CPU only (VideoPredictor too)
        ("fp16", "cpu", ValueError, "CUDA"),
        ("float32", "cpu", ValueError, "fp32, bf16, fp16, int8"),
    ],
)
def test_other_precisions(precision, device, exc, words):
    with pytest.raises(exc, match=words):
        prec.check_precision(precision, device)
    if device == "cpu":  # VideoPredictor: the same check, before any weights are read (no CUDA here)
        with pytest.raises(exc, match=words):
            VideoPredictor(fx.R50_CONFIG, "no-such-file.pth", device=device, precision=precision)


def test_fp16_alias_contradiction(weights):
    with pytest.raises(ValueError, match="contradicts"):
        Predictor(fx.R50_CONFIG, weights, device="cpu", fp16=True, precision="bf16")


# ------------------------------------------------------------------------------ oneDNN bf16 conv
@needs_bf16
@pytest.mark.parametrize("relu", [False, True])
def test_onednn_bf16_conv_matches_fp32_conv_of_rounded_operands(relu):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 48, 3, padding=1).to(torch.bfloat16)
    x = torch.randn(1, 32, 20, 24).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    fused = MkldnnConv2d(conv, relu=relu)
    with torch.no_grad():
        got = fused(x)
        want = F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), padding=1)
    want = want.relu() if relu else want
    assert got.dtype == torch.bfloat16
    # fp32 accumulation in oneDNN; the only difference is the output's rounding to bf16 (2^-8 relative)
    assert torch.allclose(got.float(), want, rtol=2 ** -7, atol=1e-2)


# ------------------------------------------------------------------------------ Predictor
def test_fp32_path_is_the_optimized_model_bit_for_bit(weights, image):
    """precision='fp32' adds nothing to optimize_for_inference: bit-identical to that model."""
    model = fx.build_model()
    model.load_state_dict(torch.load(weights)["model"])
    optimize_for_inference(model)
    tensor = torch.as_tensor(image.transpose(2, 0, 1).copy())
    with torch.inference_mode():
        want = model([{"image": tensor, "height": 120, "width": 160}])[0]["instances"]
    got = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, precision="fp32")(image)
    assert len(got) == len(want) > 0
    for field in ("pred_classes", "scores", "pred_masks"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)


def assert_close_detections(got, want):
    """At least MIN_TWINS of want's TOP detections have a bf16 twin (same class, box IoU >=
    MIN_BOX_IOU); twins' scores within SCORE_TOL, mask IoU >= MIN_MASK_IOU (mean >= MEAN_MASK_IOU)."""
    assert len(want) >= TOP and len(got) > 0
    want = want[:TOP]
    iou = pairwise_iou(want.pred_boxes, got.pred_boxes)  # (TOP, len(got))
    same_class = want.pred_classes[:, None] == got.pred_classes[None, :]
    best_iou, j = torch.where(same_class, iou, torch.zeros_like(iou)).max(dim=1)
    # Fast NMS is a hard decision: a near-tie between overlapping seeded boxes may flip which of
    # two neighbours survives, so a few of the top ones may have no twin; 8 of 10 must.
    twin = best_iou >= MIN_BOX_IOU
    assert twin.sum() >= MIN_TWINS, best_iou
    want, j = want[twin], j[twin]
    assert (want.scores - got.scores[j]).abs().max() <= SCORE_TOL
    a, b = want.pred_masks.flatten(1), got.pred_masks[j].flatten(1)
    union = (a | b).sum(1)
    mask_iou = torch.where(union > 0, (a & b).sum(1) / union.clamp(min=1), 1.0)  # both empty: equal
    assert mask_iou.mean() >= MEAN_MASK_IOU and mask_iou.min() >= MIN_MASK_IOU, mask_iou


@needs_bf16
def test_bf16_predictor_close_to_fp32(weights, image):
    fp32 = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS)(image)
    pred = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, precision="bf16")
    model = pred.model
    assert model.backbone.bottom_up.stem.conv1.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.head.parameters()} == {torch.bfloat16}
    assert model.pixel_mean.dtype == torch.float32  # normalisation stays fp32
    got = pred(image)
    assert got.scores.dtype == torch.float32 and got.pred_boxes.tensor.dtype == torch.float32
    assert_close_detections(got, fp32)
    # bf16 is really in use: the scores are not the fp32 ones
    assert not torch.equal(got.scores[: len(fp32)], fp32.scores[: len(got)])


@needs_bf16
def test_bf16_unoptimized_predictor_close_to_fp32(weights, image):
    """optimize=False: the cast alone (plain F.conv2d in bf16) gives the same detections."""
    fp32 = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, optimize=False)(image)
    got = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, optimize=False, precision="bf16")(image)
    assert_close_detections(got, fp32)


def test_cast_network_needs_a_yolact_model():
    with pytest.raises(TypeError, match="expects a Yolact model"):
        prec.cast_network(torch.nn.Conv2d(3, 3, 1))


@pytest.mark.slow
@needs_bf16
def test_bf16_video_predictor_close_to_fp32(tmp_path):
    """YolactEdge at bf16: keyframes and warped frames (both start at preprocess_image) stay close."""
    import test_video_predictor as tv

    weights = fx.write_checkpoint(str(tmp_path / "edge.pth"), seed=0, config=tv.VID_R18, opts=tv.OPTS)
    fp32 = VideoPredictor(tv.VID_R18, weights, device="cpu", opts=tv.OPTS, keyframe_interval=2)
    bf16 = VideoPredictor(tv.VID_R18, weights, device="cpu", opts=tv.OPTS, keyframe_interval=2, precision="bf16")
    for frame in tv.moving_frames(3):
        want, got = fp32(frame), bf16(frame)
        assert bf16.last_was_keyframe == fp32.last_was_keyframe
        assert_close_detections(got, want)
    assert bf16.num_keyframes == 2


# ------------------------------------------------------------------------------ tools
def test_tools_name_what_is_missing(monkeypatch, capsys):
    """train_net / benchmark / demo: an unavailable precision is one error line, before any work."""
    from yolact_d2.tools import benchmark, demo, train_net

    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2"}))
    cpu = "train.device=cpu"
    assert train_net.run_cli(["--config-file", fx.R50_CONFIG, "--eval-only", "--precision", "bf16", cpu]) == 2
    assert "avx512_bf16" in capsys.readouterr().err
    find_spec = importlib.util.find_spec  # int8 without onnxruntime (simulated): named, with the pip line
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "onnxruntime" else find_spec(m, *a))
    assert train_net.run_cli(["--config-file", fx.R50_CONFIG, "--eval-only", "--precision", "int8", cpu]) == 2
    assert "pip install onnxruntime" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert train_net.run_cli(["--config-file", fx.R50_CONFIG, "--precision", "bf16", cpu]) == 2  # training
    assert "--eval-only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--precisions", "fp32", "bf16"])
    err = capsys.readouterr().err
    assert "--precisions bf16" in err and "amx_bf16" in err
    with pytest.raises(SystemExit, match="--precision: .*avx512_bf16"):
        demo.build_predictor(demo.parse_args(["--config-file", fx.R50_CONFIG, "--input", "x.jpg", "--precision", "bf16",
                                              "--device", "cpu"]))
