"""YolactFPN: official level sizes at 550, official top-down math, wraps other D2 backbones."""
import torch
import torch.nn.functional as F

from detectron2.modeling.backbone import Backbone
from detectron2.layers import ShapeSpec

from yolact_d2.modeling import YolactFPN
from yolact_d2.modeling.backbone import build_yolact_resnet


class _Stub(Backbone):
    """A bottom-up backbone of fixed random features (C3-C5 at the 550 sizes)."""

    def __init__(self, sizes=((69, 69), (35, 35), (18, 18)), channels=(8, 16, 32)):
        super().__init__()
        self.sizes, self.channels = sizes, channels

    def forward(self, x):
        g = torch.Generator().manual_seed(0)
        return {f"res{i + 3}": torch.randn(x.shape[0], c, *s, generator=g) for i, (s, c) in enumerate(zip(self.sizes, self.channels))}

    def output_shape(self):
        return {f"res{i + 3}": ShapeSpec(channels=c, stride=2 ** (i + 3)) for i, c in enumerate(self.channels)}


def test_sizes_at_550_with_official_resnet():
    fpn = YolactFPN(build_yolact_resnet(50)).eval()
    with torch.no_grad():
        feats = fpn(torch.zeros(1, 3, 550, 550))
    assert list(feats) == ["p3", "p4", "p5", "p6", "p7"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
    assert all(f.shape[1] == 256 for f in feats.values())
    assert fpn.size_divisibility == 0
    assert {k: v.stride for k, v in fpn.output_shape().items()} == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def test_official_top_down_math():
    torch.manual_seed(0)
    fpn = YolactFPN(_Stub(), out_channels=16).eval()
    x = torch.zeros(2, 3, 550, 550)
    with torch.no_grad():
        got = fpn(x)
        c3, c4, c5 = (fpn.bottom_up(x)[f] for f in ("res3", "res4", "res5"))
        # Official FPN.forward, written out: coarsest first, bilinear to the exact lateral size.
        lat = fpn.lateral_convs
        m5 = lat[2](c5)
        m4 = F.interpolate(m5, size=(35, 35), mode="bilinear", align_corners=False) + lat[1](c4)
        m3 = F.interpolate(m4, size=(69, 69), mode="bilinear", align_corners=False) + lat[0](c3)
        p3, p4, p5 = (F.relu(conv(m)) for conv, m in zip(fpn.output_convs, (m3, m4, m5)))
        p6 = fpn.downsample_convs[0](p5)
        p7 = fpn.downsample_convs[1](p6)
    for name, want in zip(("p3", "p4", "p5", "p6", "p7"), (p3, p4, p5, p6, p7)):
        assert torch.equal(got[name], want), name
    assert (got["p5"] >= 0).all() and (got["p6"] < 0).any()  # ReLU on P3-P5, none on P6/P7


def test_missing_feature_is_named():
    import pytest

    with pytest.raises(ValueError, match="no feature"):
        YolactFPN(_Stub(), in_features=("res2", "res3", "res4"))
