"""YolactEdge feature transfer: warping, the partial backbone, SPA."""
import pytest
import torch
import torch.nn.functional as F

from yolact_d2.modeling.backbone import build_darknet53, build_mobilenet_v2, build_yolact_resnet
from yolact_d2.modeling.feature_transfer import SPA, partial_backbone_forward, pixel_shift_to_flow, warp_features


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """out[..., y, x] = x[..., y + dy, x + dx], zero where that falls outside (torch.roll + zero fill)."""
    out = torch.roll(x, shifts=(-dy, -dx), dims=(-2, -1))
    h, w = x.shape[-2:]
    if dy > 0:
        out[..., h - dy:, :] = 0
    elif dy < 0:
        out[..., :-dy, :] = 0
    if dx > 0:
        out[..., :, w - dx:] = 0
    elif dx < 0:
        out[..., :, :-dx] = 0
    return out


@pytest.mark.parametrize("dx,dy", [(0, 0), (1, 0), (0, 2), (-3, 1), (2, -2)])
def test_integer_flow_is_a_shift(dx, dy):
    torch.manual_seed(0)
    feat = torch.randn(2, 5, 35, 18)  # P4-like, non-square so x/y cannot be swapped unnoticed
    fx, fy = pixel_shift_to_flow(dx, dy, feat.shape[-2:])
    flow = torch.empty(2, 2, 35, 18)
    flow[:, 0], flow[:, 1] = fx, fy
    torch.testing.assert_close(warp_features(feat, flow), shifted(feat, dx, dy), atol=1e-5, rtol=0)


def test_per_pixel_flow_follows_official_grid():
    """A different integer shift per column: each column reads its own source pixel (hand computed)."""
    feat = torch.arange(4 * 6, dtype=torch.float32).view(1, 1, 4, 6)
    shifts = torch.tensor([1, 0, -1, 2, 0, -5])  # column x reads column x + shift (x=5 -> 0)
    flow = torch.zeros(1, 2, 4, 6)
    flow[0, 0] = (shifts * 16.0 / 5).view(1, 6)
    out = warp_features(feat, flow)[0, 0]
    expected = torch.stack([feat[0, 0, :, x + s] for x, s in enumerate(shifts.tolist())], dim=1)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_warp_rejects_mismatched_flow():
    with pytest.raises(ValueError, match=r"flow \(1, 2, 4, 4\) must be \(N, 2\) at the feature's size \(5, 5\)"):
        warp_features(torch.zeros(1, 3, 5, 5), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="a 1x4 map has no official warp grid"):
        warp_features(torch.zeros(1, 3, 1, 4), torch.zeros(1, 2, 1, 4))


@pytest.mark.parametrize(
    "make,until",
    [
        (lambda: build_yolact_resnet(depth=50), "res3"),  # Detectron2 ResNet (official YOLACT layout)
        (lambda: build_yolact_resnet(depth=18), "res3"),  # BasicBlock ResNet
        (lambda: build_darknet53(), "dark3"),
        (lambda: build_mobilenet_v2(), "stage3"),
    ],
    ids=["R50", "R18", "DarkNet53", "MobileNetV2"],
)
@torch.no_grad()
def test_partial_backbone_equals_full_backbone_c3(make, until):
    torch.manual_seed(0)
    backbone = make().eval()
    x = torch.randn(2, 3, 96, 80)
    full = backbone(x)[until]
    part = partial_backbone_forward(backbone, x, until)
    assert list(part) == [until]
    assert torch.equal(part[until], full)  # same modules, same ops: bit for bit


@torch.no_grad()
def test_partial_backbone_of_detectron2_regnet():
    from detectron2.modeling.backbone.regnet import RegNet, SimpleStem, ResBottleneckBlock

    torch.manual_seed(0)
    net = RegNet(
        stem_class=SimpleStem, stem_width=8, block_class=ResBottleneckBlock, depth=4, w_a=8.0, w_0=8, w_m=2.0,
        group_width=8, out_features=["s1", "s2", "s3"], norm="BN",
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(partial_backbone_forward(net, x, "s2")["s2"], net(x)["s2"])


def test_partial_backbone_errors():
    with pytest.raises(ValueError, match=r"has no stage 'res9'; its stages are \['res2', 'res3', 'res4', 'res5'\]"):
        partial_backbone_forward(build_yolact_resnet(depth=18), torch.zeros(1, 3, 32, 32), "res9")
    with pytest.raises(TypeError, match="add a forward_until method"):
        partial_backbone_forward(torch.nn.Conv2d(3, 3, 1), torch.zeros(1, 3, 8, 8), "res3")


@torch.no_grad()
def test_spa_hand_computed():
    """SPA = x + LeakyReLU(conv([x, lateral resized to x])), the lateral resized step by step."""
    torch.manual_seed(0)
    spa = SPA(channels=4, num_levels=2).eval()
    lateral, p4, p5 = torch.randn(1, 4, 12, 12), torch.randn(1, 4, 6, 6), torch.randn(1, 4, 3, 3)
    out4, out5 = spa(lateral, [p4, p5])
    lat4 = F.interpolate(lateral, size=(6, 6), mode="bilinear", align_corners=False)
    lat5 = F.interpolate(lat4, size=(3, 3), mode="bilinear", align_corners=False)  # from lat4, as official
    for out, x, lat, conv in ((out4, p4, lat4, spa.refine_convs[0][0]), (out5, p5, lat5, spa.refine_convs[1][0])):
        want = x + F.leaky_relu(F.conv2d(torch.cat([x, lat], 1), conv.weight, conv.bias, padding=1), 0.1)
        torch.testing.assert_close(out, want)


def test_spa_zero_init_starts_as_identity_and_learns():
    """zero_init: the refine convs are zero, so SPA returns its inputs unchanged, yet the convs get a
    gradient (LeakyReLU's slope 0.1 at 0), so training can move away from the identity."""
    torch.manual_seed(0)
    spa = SPA(channels=4, num_levels=2, zero_init=True)
    lateral, p4, p5 = torch.randn(2, 4, 12, 12), torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)
    out4, out5 = spa(lateral, [p4, p5])
    assert torch.equal(out4, p4) and torch.equal(out5, p5)
    (out4.square().sum() + out5.square().sum()).backward()
    for refine in spa.refine_convs:
        assert refine[0].weight.grad.abs().max() > 0 and refine[0].bias.grad.abs().max() > 0
