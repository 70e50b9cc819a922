"""DarkNet-53 backbone: official key layout, forward against a functional re-statement of the
official network, feature shapes at 550, freezing."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import FrozenBatchNorm2d

from yolact_d2.checkpoint.layouts import LAYOUT_DIR
from yolact_d2.modeling.backbone.darknet import DarkNet, build_darknet53

# The official key table ships with the package (setup.py package data): no machine paths.
TSV = Path(LAYOUT_DIR) / "yolact_darknet53_config.keys.tsv"


def _official_to_ours(key: str) -> str:
    """Rename rule official DarkNetBackbone -> ours (stated here independently of the converter):
    _preconv.{0,1} -> stem(.norm); layers.s.0.{0,1} -> dark{s+1}.0(.norm);
    layers.s.b.convj.{0,1} -> dark{s+1}.b.convj(.norm)."""
    p = key.split(".")
    if p[0] == "_preconv":
        return ".".join(["stem"] + (["norm"] if p[1] == "1" else []) + p[2:])
    s, b = int(p[1]), p[2]
    if b == "0":
        return ".".join([f"dark{s + 1}", "0"] + (["norm"] if p[3] == "1" else []) + p[4:])
    return ".".join([f"dark{s + 1}", b, p[3]] + (["norm"] if p[4] == "1" else []) + p[5:])


def test_key_layout_matches_official_darknet53():
    official = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("backbone."):
            key, shape, _ = line.split("\t")
            if not key.endswith("num_batches_tracked"):  # FrozenBN keeps no counter
                official[_official_to_ours(key[len("backbone."):])] = eval(shape)
    ours = {k: list(v.shape) for k, v in build_darknet53().state_dict().items()}
    assert set(ours) == set(official)
    assert all(ours[k] == official[k] for k in ours)
    assert len(ours) == 260


def _functional_darknet(sd, x, blocks=(1, 2, 8, 8, 4)):
    """Official DarkNetBackbone.forward re-stated with F.* on a state dict (BN in eval mode)."""

    def cbl(prefix, x, stride, pad):
        x = F.conv2d(x, sd[prefix + ".weight"], None, stride, pad)
        x = F.batch_norm(x, sd[prefix + ".norm.running_mean"], sd[prefix + ".norm.running_var"],
                         sd[prefix + ".norm.weight"], sd[prefix + ".norm.bias"], False, 0.0, 1e-5)
        return torch.where(x > 0, x, 0.1 * x)

    x = cbl("stem", x, 1, 1)
    outs = []
    for s, n in enumerate(blocks, start=1):
        x = cbl(f"dark{s}.0", x, 2, 1)
        for b in range(1, n + 1):
            x = cbl(f"dark{s}.{b}.conv2", cbl(f"dark{s}.{b}.conv1", x, 1, 0), 1, 1) + x
        outs.append(x)
    return outs


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("weight") and t.dim() == 4:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_forward_matches_functional_official(norm):
    model = DarkNet(norm=norm, out_features=("dark1", "dark2", "dark3", "dark4", "dark5")).eval()
    _randomise(model)
    x = torch.randn(2, 3, 70, 58)
    with torch.no_grad():
        got = model(x)
        want = _functional_darknet({k: v.clone() for k, v in model.state_dict().items()}, x)
    for k, w in zip(["dark1", "dark2", "dark3", "dark4", "dark5"], want):
        torch.testing.assert_close(got[k], w, rtol=1e-4, atol=1e-4)
    # LeakyReLU slope is 0.1: stem output has negatives exactly 0.1 x pre-activation somewhere.
    assert (got["dark1"] < 0).any()


def test_shapes_at_550_and_output_shape():
    model = build_darknet53().eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 550, 550))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "dark3": (1, 256, 69, 69), "dark4": (1, 512, 35, 35), "dark5": (1, 1024, 18, 18)}
    assert {k: (s.channels, s.stride) for k, s in model.output_shape().items()} == {
        "dark3": (256, 8), "dark4": (512, 16), "dark5": (1024, 32)}
    learned = sum(v.numel() for k, v in model.state_dict().items() if "running_" not in k)
    assert learned == 40_584_928  # conv weights + BN affine of the official D53 backbone


def test_truncates_after_deepest_feature_and_freezes():
    m = DarkNet(norm="BN", out_features=("dark2", "dark3"), freeze_at=2)
    assert not hasattr(m, "dark4") and not hasattr(m, "dark5")
    assert isinstance(m.stem.norm, FrozenBatchNorm2d) and isinstance(m.dark1[0].norm, FrozenBatchNorm2d)
    assert not isinstance(m.dark2[0].norm, FrozenBatchNorm2d)
    assert all(not p.requires_grad for p in m.dark1.parameters())
    assert all(p.requires_grad for p in m.dark2.parameters())


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown out_features"):
        DarkNet(out_features=("res3",))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        build_darknet53()(torch.zeros(1, 1, 32, 32))


# ------------------------------------------------------------------------------ config + weights
CONFIG = Path(__file__).resolve().parents[1] / "configs/yolact/yolact_D_53_FPN_550.py"


@pytest.mark.slow
def test_d53_config_converts_synthetic_official_checkpoint_and_preprocesses_like_official():
    from detectron2.config import LazyConfig, instantiate

    from yolact_d2.checkpoint import (
        ConversionError,
        convert_official_state_dict,
        default_config_for,
        detect_variant,
        synthetic_official_state_dict,
    )

    official = synthetic_official_state_dict("yolact_darknet53_config", seed=2)
    info = detect_variant(official)
    assert info["backbone"] == "darknet53" and not info["plus"]
    assert default_config_for(info) == "configs/yolact/yolact_D_53_FPN_550.py"
    model = instantiate(LazyConfig.load(str(CONFIG)).model).eval()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted, summary = convert_official_state_dict(official, expected)
    model.load_state_dict(converted, strict=True)
    assert summary.mapped == len(expected) and len(summary.dropped) == sum(
        k.endswith("num_batches_tracked") for k in official)
    bb = model.backbone.bottom_up
    assert torch.equal(bb.stem.weight, official["backbone._preconv.0.weight"])
    assert torch.equal(bb.dark3[0].norm.running_mean, official["backbone.layers.2.0.1.running_mean"])
    assert torch.equal(bb.dark5[4].conv2.norm.bias, official["backbone.layers.4.4.conv2.1.bias"])
    assert torch.equal(bb.dark2[2].conv1.weight, official["backbone.layers.1.2.conv1.0.weight"])
    # FPN lateral 0 (official: coarsest, C5 = 1024 channels) -> our last lateral
    assert torch.equal(model.backbone.lateral_convs[2].weight, official["fpn.lat_layers.0.weight"])
    broken = dict(official)
    broken["backbone.layers.3.0.1.running_var"] = torch.ones(256)
    with pytest.raises(ConversionError, match=r"dark4\.0\.norm\.running_var.*\[512\]"):
        convert_official_state_dict(broken, expected)

    # Official darknet_transform: resize, /255 (no mean), BGR -> RGB.
    img = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    x = model.preprocess_image([{"image": img}]).tensor[0]
    want = F.interpolate(img.float()[None], size=(550, 550), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(x, want[[2, 1, 0]] / 255.0)


def test_registered_yacs_builder():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_yolact_darknet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 1
    m = build_backbone(cfg)
    assert isinstance(m, DarkNet) and list(m.output_shape()) == ["dark3", "dark4", "dark5"]
    assert isinstance(m.stem.norm, FrozenBatchNorm2d) and not m.stem.weight.requires_grad
