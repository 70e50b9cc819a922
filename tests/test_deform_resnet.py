"""Deformable ResNet (YOLACT++): DCNv2 maths against a plain-PyTorch bilinear-sampling oracle,
official channel order, official block placement and key layout."""
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import FrozenBatchNorm2d

from yolact_d2.checkpoint.layouts import LAYOUT_DIR
from yolact_d2.modeling.backbone.deform_resnet import (
    DeformableBottleneckBlock,
    ModulatedDeformConv2d,
    build_deform_resnet,
    official_deform_flags,
)

# The official key tables ship with the package (setup.py package data): no machine paths.
OFFICIAL_DIR = Path(LAYOUT_DIR)


def reference_dcn(x, offset, mask, weight, bias, stride, padding, dilation):
    """Modulated deformable conv written out: per tap, bilinear-sample every input channel at
    (oy*s - p + i*d + dy, ox*s - p + j*d + dx) with zero outside the image (corner by corner,
    as DCNv2's im2col), multiply by the tap's mask, then contract with the weights.
    offset: (B, 2*kh*kw, Ho, Wo) as (dy, dx) pairs per tap; mask: (B, kh*kw, Ho, Wo)."""
    B, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho, Wo = offset.shape[-2:]
    oy = torch.arange(Ho, dtype=x.dtype).view(1, Ho, 1) * stride - padding
    ox = torch.arange(Wo, dtype=x.dtype).view(1, 1, Wo) * stride - padding
    flat = x.reshape(B, C, H * W)
    cols = []
    for t, (i, j) in enumerate(itertools.product(range(kh), range(kw))):
        py = oy + i * dilation + offset[:, 2 * t]  # (B, Ho, Wo)
        px = ox + j * dilation + offset[:, 2 * t + 1]
        y0, x0 = torch.floor(py), torch.floor(px)
        ly, lx = py - y0, px - x0
        sampled = torch.zeros(B, C, Ho, Wo, dtype=x.dtype)
        for dy, dx in itertools.product((0, 1), (0, 1)):
            yy, xx = (y0 + dy).long(), (x0 + dx).long()
            wgt = (ly if dy else 1 - ly) * (lx if dx else 1 - lx)
            inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).view(B, 1, -1).expand(B, C, -1)
            vals = torch.gather(flat, 2, idx).view(B, C, Ho, Wo)
            sampled = sampled + vals * (wgt * inside)[:, None]
        cols.append(sampled * mask[:, t][:, None])
    cols = torch.stack(cols, dim=2)  # (B, C, kh*kw, Ho, Wo)
    out = torch.einsum("bckhw,ock->bohw", cols, weight.reshape(O, C, kh * kw))
    if bias is not None:
        out = out + bias.view(1, O, 1, 1)
    return out


def module_reference(m: ModulatedDeformConv2d, x):
    """The official DCN forward, written from its description: conv_offset_mask -> (o1, o2, m),
    offset = cat(o1, o2), mask = sigmoid(m)."""
    out = F.conv2d(x, m.conv_offset_mask.weight, m.conv_offset_mask.bias,
                   m.stride, m.padding, m.dilation)
    o1, o2, logits = torch.chunk(out, 3, dim=1)
    return reference_dcn(x, torch.cat([o1, o2], 1), torch.sigmoid(logits), m.weight, m.bias,
                         m.stride[0], m.padding[0], m.dilation[0])


def _randomised_dcn(cin, cout, stride, offset_scale, dilation=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = ModulatedDeformConv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)
    m = m.double()
    with torch.no_grad():
        m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
        m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
        w = m.conv_offset_mask.weight
        w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float64) * 0.3)
        b = m.conv_offset_mask.bias
        b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64))
        b[: 2 * 9] *= offset_scale  # offsets of tens of pixels
    return m


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_dcn_matches_bilinear_reference_large_offsets(stride, dilation):
    torch.manual_seed(1)
    m = _randomised_dcn(5, 4, stride, offset_scale=15.0, dilation=dilation)
    x = torch.randn(2, 5, 23, 31, dtype=torch.float64)
    off, _ = m.offset_and_mask(x)
    assert off.abs().max() > 20  # really tens of pixels, many samples fall outside
    got = m(x)
    want = module_reference(m, x)
    assert got.shape == want.shape == (2, 4, (23 - 1) // stride + 1, (31 - 1) // stride + 1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_dcn_gradients_match_reference():
    m = _randomised_dcn(3, 2, 2, offset_scale=4.0, seed=3)
    x = torch.randn(1, 3, 11, 9, dtype=torch.float64, requires_grad=True)
    params = [x, m.weight, m.bias, m.conv_offset_mask.weight, m.conv_offset_mask.bias]
    g_got = torch.autograd.grad(m(x).square().sum(), params)
    g_want = torch.autograd.grad(module_reference(m, x).square().sum(), params)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_zero_offsets_full_mask_is_ordinary_conv():
    torch.manual_seed(0)
    m = ModulatedDeformConv2d(6, 7, 3, stride=2, padding=1)
    with torch.no_grad():
        m.bias.normal_()
        m.conv_offset_mask.bias[18:] = 40.0  # sigmoid -> 1 exactly in float32
    x = torch.randn(2, 6, 17, 14)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, 2, 1), rtol=1e-5, atol=1e-5)


def test_bfloat16_runs_in_float32_and_returns_bfloat16():
    # torchvision has no bf16 deform_conv2d (YOLACT++ at precision="bf16"). Oracle: the float64
    # bilinear reference on the module's own bf16 offsets / mask, weights and input; the result
    # then differs by the final rounding to bf16 only (2^-8 relative).
    m = _randomised_dcn(3, 4, 1, offset_scale=3.0, seed=5).to(torch.bfloat16)
    x = torch.randn(1, 3, 9, 10, dtype=torch.float64).to(torch.bfloat16)
    got = m(x)
    assert got.dtype == torch.bfloat16
    off, mask = m.offset_and_mask(x)
    want = reference_dcn(x.double(), off.double(), mask.double(), m.weight.double(), m.bias.double(),
                         m.stride[0], m.padding[0], m.dilation[0])
    torch.testing.assert_close(got.double(), want, rtol=2 ** -8, atol=1e-6)


def test_official_init_is_half_amplitude_conv():
    # Official init zeroes conv_offset_mask: offsets 0 and mask sigmoid(0) = 0.5.
    m = ModulatedDeformConv2d(4, 4, 3, stride=1, padding=1)
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(m(x), 0.5 * F.conv2d(x, m.weight, m.bias, 1, 1), rtol=1e-5, atol=1e-6)


def test_offset_channel_order_hand_computed():
    """Tap t=(0,2) (top-right) only; its dy lives in cat(o1,o2) channel 2t=4 (o1[4]), dx in
    channel 5 (o1[5]), mask logit in channel 18+t. Integer offsets -> exact shifted copy."""
    m = ModulatedDeformConv2d(1, 1, 3, stride=2, padding=1, bias=False)
    t, dy, dx = 2, 4.0, -3.0
    with torch.no_grad():
        m.weight.zero_()
        m.weight[0, 0, 0, 2] = 1.0
        m.conv_offset_mask.bias[2 * t] = dy
        m.conv_offset_mask.bias[2 * t + 1] = dx
        m.conv_offset_mask.bias[18 + t] = 0.0  # mask 0.5
    H, W = 12, 10
    x = torch.arange(H * W, dtype=torch.float32).view(1, 1, H, W) + 1
    out = m(x)[0, 0]
    for oy in range(out.shape[0]):
        for ox in range(out.shape[1]):
            y, xx = oy * 2 - 1 + 0 + int(dy), ox * 2 - 1 + 2 + int(dx)
            want = 0.5 * x[0, 0, y, xx].item() if (0 <= y < H and 0 <= xx < W) else 0.0
            assert out[oy, ox].item() == pytest.approx(want), (oy, ox)


def test_border_samples_zero_padded_like_dcnv2():
    # Samples at -1, -0.5, H-1, H-0.5, H (rows) with a 1x1 kernel: corner-wise zero padding.
    H, W = 4, 3
    x = torch.arange(1, H * W + 1, dtype=torch.float64).view(1, 1, H, W)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    rows = [-1.0, -0.5, H - 1.0, H - 0.5, float(H)]
    offset = torch.zeros(1, 2, H, W, dtype=torch.float64)
    for r, target in enumerate(rows[:H]):
        offset[0, 0, r] = target - r
    offset[0, 1, 0, 0] = -0.5  # x = -0.5 as well at (0, 0)
    mask = torch.ones(1, 1, H, W, dtype=torch.float64)
    from torchvision.ops import deform_conv2d

    got = deform_conv2d(x, offset, weight, None, mask=mask)
    want = reference_dcn(x, offset, mask, weight, None, 1, 0, 1)
    torch.testing.assert_close(got, want)
    col = x[0, 0, :, 1]
    assert got[0, 0, 0, 1].item() == 0.0  # row -1 exactly
    assert got[0, 0, 1, 1].item() == pytest.approx(0.5 * col[0].item())  # row -0.5
    assert got[0, 0, 2, 1].item() == pytest.approx(col[H - 1].item())  # row H-1
    assert got[0, 0, 3, 1].item() == pytest.approx(0.5 * col[H - 1].item())  # row H-0.5


def _official_block_reference(block: DeformableBottleneckBlock, x):
    def bn(y, norm):
        return F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            False, 0.0, norm.eps)

    out = F.relu(bn(F.conv2d(x, block.conv1.weight, None, block.conv1.stride), block.conv1.norm))
    out = F.relu(bn(module_reference(block.conv2, out), block.conv2.norm))
    out = bn(F.conv2d(out, block.conv3.weight), block.conv3.norm)
    sc = x if block.shortcut is None else bn(
        F.conv2d(x, block.shortcut.weight, None, block.shortcut.stride), block.shortcut.norm)
    return F.relu(out + sc)


@pytest.mark.parametrize("stride,cin", [(2, 32), (1, 64)])
def test_deformable_block_matches_official_block(stride, cin):
    torch.manual_seed(0)
    blk = DeformableBottleneckBlock(cin, 64, bottleneck_channels=16, stride=stride, deform=True)
    blk = blk.double().eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
        for mod in blk.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
        blk.conv2.conv_offset_mask.bias[:18] *= 10
    x = torch.randn(2, cin, 15, 13, dtype=torch.float64)
    torch.testing.assert_close(blk(x), _official_block_reference(blk, x), rtol=1e-9, atol=1e-9)
    # stride sits in the 3x3 (deformable) conv, like the official / torchvision ResNet
    assert blk.conv1.stride == (1, 1) and blk.conv2.stride == (stride, stride)


def test_official_placement_rule():
    assert official_deform_flags(4, 4, 1) == [True] * 4
    assert official_deform_flags(3, 0, 1) == [False] * 3
    assert official_deform_flags(4, 4, 3) == [True, False, False, True]
    assert [i for i, f in enumerate(official_deform_flags(23, 23, 3)) if f] == [0, 3, 6, 9, 12, 15, 18, 21]
    assert official_deform_flags(3, 3, 3) == [True, False, False]
    assert official_deform_flags(6, 2, 1) == [False] * 4 + [True] * 2


def _official_backbone_keys(tsv):
    """{our key: shape} from an official key table, renamed by the layout rule stated here."""
    out = {}
    for line in (OFFICIAL_DIR / tsv).read_text().splitlines():
        if line.startswith("#") or not line.startswith("backbone."):
            continue
        key, shape, _ = line.split("\t")
        if key.endswith("num_batches_tracked"):
            continue  # FrozenBN (our default, as official eval/training) has no counter
        parts = key.split(".")[1:]
        if parts[0] == "layers":
            parts = [f"res{int(parts[1]) + 2}", parts[2]] + parts[3:]
            if parts[2] == "downsample":
                parts = parts[:2] + ["shortcut"] + (["norm"] if parts[3] == "1" else []) + parts[4:]
            elif parts[2].startswith("bn"):
                parts = parts[:2] + ["conv" + parts[2][2:], "norm"] + parts[3:]
        else:  # stem
            parts = ["stem", "conv1"] + (["norm"] if parts[0] == "bn1" else []) + parts[1:]
        out[".".join(parts)] = eval(shape)
    return out


@pytest.mark.parametrize(
    "tsv,depth,dcn,interval",
    [
        ("yolact_plus_resnet50_config.keys.tsv", 50, (0, 4, 6, 3), 1),
        ("yolact_plus_base_config.keys.tsv", 101, (0, 4, 23, 3), 3),
    ],
)
def test_key_layout_matches_official(tsv, depth, dcn, interval):
    official = _official_backbone_keys(tsv)
    model = build_deform_resnet(depth, dcn, interval, out_features=("res3", "res4", "res5"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) == set(official), (sorted(set(ours) - set(official))[:5],
                                        sorted(set(official) - set(ours))[:5])
    assert all(ours[k] == official[k] for k in ours)
    n_dcn = sum(k.endswith("conv_offset_mask.weight") for k in ours)
    assert n_dcn == {50: 13, 101: 11}[depth]


def test_backbone_shapes_and_freeze():
    m = build_deform_resnet(50, (0, 4, 6, 3), 1, norm="BN", freeze_at=3).eval()
    shapes = m.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}
    out = m(torch.randn(1, 3, 550, 550))
    assert [tuple(out[k].shape[-2:]) for k in ("res3", "res4", "res5")] == [(69, 69), (35, 35), (18, 18)]
    # freeze_at=3: stem, res2, res3 frozen, deformable blocks included
    assert isinstance(m.res2[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(m.res3[0].conv2.norm, FrozenBatchNorm2d)
    assert not isinstance(m.res4[0].conv2.norm, FrozenBatchNorm2d)
    assert all(not p.requires_grad for p in m.res3.parameters())
    assert not m.res3[0].conv2.conv_offset_mask.weight.requires_grad
    assert m.res4[0].conv2.conv_offset_mask.weight.requires_grad


def test_small_variant_and_bad_arguments():
    m = build_deform_resnet(50, num_blocks_per_stage=(1, 1, 2, 1))
    assert [len(s) for s in (m.res2, m.res3, m.res4, m.res5)] == [1, 1, 2, 1]
    assert isinstance(m.res4[1].conv2, ModulatedDeformConv2d) and not isinstance(m.res2[0].conv2, ModulatedDeformConv2d)
    with pytest.raises(ValueError, match="depth must be one of"):
        build_deform_resnet(34)
    with pytest.raises(ValueError, match="one entry per stage"):
        build_deform_resnet(50, (4, 6, 3))
    with pytest.raises(ValueError, match="num_groups=1"):
        DeformableBottleneckBlock(64, 256, bottleneck_channels=64, num_groups=32, deform=True)


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime(tmp_path):
    """torch's dynamo exporter maps torchvision's deform_conv2d to ONNX DeformConv (opset 19)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    m = ModulatedDeformConv2d(4, 5, 3, stride=2, padding=1).eval()
    with torch.no_grad():
        m.conv_offset_mask.weight.normal_(0, 0.5)
        m.conv_offset_mask.bias.normal_(0, 4)  # offsets of several pixels, some outside the image
    x = torch.randn(1, 4, 16, 16)
    path = str(tmp_path / "dcn.onnx")
    torch.onnx.export(m, (x,), path, dynamo=True)
    sess = ort.InferenceSession(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), m(x), rtol=1e-4, atol=1e-5)


def test_registered_yacs_builder():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_yolact_deform_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH = 101
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.DEFORM_NUM_LAST = (0, 4, 23, 3)
    cfg.MODEL.RESNETS.DEFORM_INTERVAL = 3
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    m = build_backbone(cfg)
    deform = [n for n, mod in m.named_modules() if isinstance(mod, ModulatedDeformConv2d)]
    assert deform == ["res3.0.conv2", "res3.3.conv2"] + [f"res4.{i}.conv2" for i in range(0, 23, 3)] + ["res5.0.conv2"]
