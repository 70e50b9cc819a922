"""yolact_d2.Predictor and the inference rewrites it applies (batch-norm folding, channels_last).

Oracle: the plain model built from the same config, loaded with the same seeded state dict and
called as a Detectron2 meta-arch (`model([{"image", "height", "width"}])`).
"""
import numpy as np
import pytest
import torch

import inference_fixtures as fx
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from yolact_d2 import Predictor
from yolact_d2.deploy.optimize import fold_batch_norm
from yolact_d2.predictor import WeightsMismatchError


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return fx.write_checkpoint(str(tmp_path_factory.mktemp("w") / "seeded.pth"), seed=0)


@pytest.fixture(scope="module")
def image():
    return fx.test_image(120, 160, seed=1)


@pytest.fixture(scope="module")
def reference(weights, image):
    """Detections of the plain model called directly (no Predictor, no rewrites)."""
    model = fx.build_model()
    model.load_state_dict(torch.load(weights)["model"])
    tensor = torch.as_tensor(image.transpose(2, 0, 1).copy())
    with torch.no_grad():
        return model([{"image": tensor, "height": 120, "width": 160}])[0]["instances"]


def mask_iou(a, b):
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def assert_same_detections(got, want, exact=False):
    assert len(got) == len(want) > 0
    assert torch.equal(got.pred_classes, want.pred_classes)
    if exact:
        assert torch.equal(got.scores, want.scores)
        assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
        assert torch.equal(got.pred_masks, want.pred_masks)
    else:
        assert torch.allclose(got.scores, want.scores, atol=1e-4, rtol=0)
        # integer pixel boxes: a float-rounding change may move a truncated coordinate by 1 px
        assert (got.pred_boxes.tensor - want.pred_boxes.tensor).abs().max() <= 1
        assert mask_iou(got.pred_masks, want.pred_masks).min() >= 0.99


def test_plain_predictor_equals_model(weights, image, reference):
    pred = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, optimize=False)
    out = pred(image)
    assert out.image_size == (120, 160)
    assert out.pred_masks.shape == (len(out), 120, 160) and out.pred_masks.dtype == torch.bool
    assert_same_detections(out, reference, exact=True)
    # confident detections exist (the seeded class biases work), scores sorted
    assert out.scores.max() > 0.3
    assert torch.all(out.scores[:-1] >= out.scores[1:])


def test_optimized_predictor_same_detections(weights, image, reference):
    pred = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS)
    norms = [m for m in pred.model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert norms == []  # all 53 ResNet-50 norms folded
    assert type(pred.model.head).__name__ == "FusedYolactHead"  # box/class/coef convs stacked
    assert pred.model.head.predict.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_detections(pred(image), reference)


def test_batch_equals_single(weights):
    pred = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, optimize=False)
    a, b = fx.test_image(120, 160, seed=2), fx.test_image(90, 200, seed=3)
    batch = pred([a, b])
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[1].image_size == (90, 200)
    for got, img in zip(batch, (a, b)):
        single = pred(img)
        assert torch.equal(got.pred_classes, single.pred_classes)
        assert torch.allclose(got.scores, single.scores, atol=1e-5)
        assert mask_iou(got.pred_masks, single.pred_masks).min() >= 0.99


def test_score_threshold_and_metadata(weights, image, reference):
    pred = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, score_threshold=0.3, optimize=False)
    out = pred(image)
    want = reference[reference.scores > 0.3]
    assert len(out) == len(want) > 0
    assert torch.equal(out.scores, want.scores)
    # 80 classes -> Detectron2's COCO names
    assert pred.metadata.thing_classes[0] == "person" and len(pred.metadata.thing_classes) == 80


def test_opts_override(weights, image):
    pred = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS + ["model.post_processor.max_detections=5"])
    assert len(pred(image)) == 5


def test_official_checkpoint_is_converted(tmp_path, image):
    from yolact_d2.checkpoint import convert_official_state_dict, synthetic_official_state_dict

    official = synthetic_official_state_dict("yolact_resnet50_config", seed=3)
    path = str(tmp_path / "official.pth")
    torch.save(official, path)
    pred = Predictor(fx.R50_CONFIG, path, device="cpu", opts=fx.SMALL_OPTS, optimize=False)
    model = fx.build_model()
    converted, _ = convert_official_state_dict(official, {k: v.shape for k, v in model.state_dict().items()})
    for k, v in pred.model.state_dict().items():
        assert torch.equal(v, converted[k]), k


# ------------------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def predictor(weights):
    return Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS)


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (torch.zeros(3, 20, 20, dtype=torch.uint8), TypeError, ["numpy array", "permute"]),
        ([[0, 1], [2, 3]], TypeError, ["numpy array", "list"]),
        (np.zeros((20, 30), np.uint8), ValueError, ["grayscale", "COLOR_GRAY2BGR"]),
        (np.zeros((20, 30, 4), np.uint8), ValueError, ["4 channels", "BGRA"]),
        (np.zeros((3, 20, 30), np.uint8), ValueError, ["channel-first", "transpose"]),
        (np.zeros((20, 30, 3), np.float32), TypeError, ["float32", "uint8"]),
        (np.zeros((0, 30, 3), np.uint8), ValueError, ["empty"]),
    ],
)
def test_bad_images(predictor, bad, exc, words):
    with pytest.raises(exc) as e:
        predictor(bad)
    for w in words:
        assert w in str(e.value)


def test_bad_image_in_batch_named(predictor, image):
    with pytest.raises(ValueError, match="image 1 "):
        predictor([image, np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError, match="empty list"):
        predictor([])


def test_missing_files(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="config file .*nope.py"):
        Predictor(str(tmp_path / "nope.py"), weights, device="cpu")
    with pytest.raises(FileNotFoundError, match="weights file .*nope.pth"):
        Predictor(fx.R50_CONFIG, str(tmp_path / "nope.pth"), device="cpu", opts=fx.SMALL_OPTS)


def test_weights_of_other_class_count(tmp_path):
    path = fx.write_checkpoint(str(tmp_path / "c5.pth"), seed=0, num_classes=5)
    with pytest.raises(WeightsMismatchError) as e:
        Predictor(fx.R50_CONFIG, path, device="cpu", opts=fx.SMALL_OPTS)
    msg = str(e.value)
    assert "head.cls_score.weight: checkpoint [18, 256, 3, 3] vs model [243, 256, 3, 3]" in msg
    assert "num_classes" in msg
    # with the right class count the same file loads
    pred = Predictor(fx.R50_CONFIG, path, device="cpu", opts=fx.SMALL_OPTS + ["model.num_classes=5", "model.head.num_classes=5"])
    assert pred.model.num_classes == 5 and len(pred.metadata.thing_classes) == 5


def test_weights_with_missing_and_extra_keys(tmp_path):
    sd = fx.seeded_state_dict(seed=0)
    sd.pop("protonet.proto_pred.weight")
    sd["extra.layer.weight"] = torch.zeros(2, 3)
    path = str(tmp_path / "partial.pth")
    torch.save(sd, path)  # plain state dict (no {"model": ...} wrapper) is accepted
    with pytest.raises(WeightsMismatchError) as e:
        Predictor(fx.R50_CONFIG, path, device="cpu", opts=fx.SMALL_OPTS)
    assert "Missing in the checkpoint: protonet.proto_pred.weight [32, 256, 1, 1]" in str(e.value)
    assert "Not in the model: extra.layer.weight [2, 3]" in str(e.value)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*junk.pth"):
        Predictor(fx.R50_CONFIG, str(path), device="cpu", opts=fx.SMALL_OPTS)


def test_fp16_needs_cuda(weights):
    with pytest.raises(ValueError, match="fp16"):
        Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, fp16=True)


# ------------------------------------------------------------------------------ folding
def test_fold_batch_norm_exact_affine():
    torch.manual_seed(0)
    conv = Conv2d(4, 6, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(6))
    conv.norm.weight.uniform_(0.5, 1.5)
    conv.norm.bias.normal_()
    conv.norm.running_mean.normal_()
    conv.norm.running_var.uniform_(0.2, 2.0)
    bn_conv = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1))  # no norm: untouched
    net = torch.nn.Sequential(bn_conv, conv)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        want = net(x)
        assert fold_batch_norm(net) == 1
        got = net(x)
    assert conv.norm is None and conv.bias is not None
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_fold_skips_training_batch_norm():
    conv = Conv2d(2, 2, 1, norm=torch.nn.BatchNorm2d(2))
    conv.train()
    assert fold_batch_norm(conv) == 0 and conv.norm is not None
    conv.eval()
    assert fold_batch_norm(conv) == 1 and conv.norm is None


def test_onednn_conv_relu_rewrite_is_exact():
    import copy

    from yolact_d2.deploy.optimize import MkldnnConv2d, fuse_conv_relu, fuse_head_predictors

    model = fx.build_model()
    model.load_state_dict(fx.seeded_state_dict(seed=0))
    fold_batch_norm(model)
    fuse_head_predictors(model)
    model.to(memory_format=torch.channels_last)
    rewritten = copy.deepcopy(model)
    n = fuse_conv_relu(rewritten)
    if n == 0:
        pytest.skip("this torch build has no oneDNN fused convolution op")
    assert n == sum(isinstance(m, MkldnnConv2d) for m in rewritten.modules()) and n >= 60
    x = torch.randn(2, 3, 160, 160).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = model.backbone(x), rewritten.backbone(x)
        for k in want:
            assert torch.equal(got[k], want[k]), k
        levels = [want[f] for f in model.head_features]
        for k, v in model.head(levels).items():
            assert torch.equal(rewritten.head(levels)[k], v), k
