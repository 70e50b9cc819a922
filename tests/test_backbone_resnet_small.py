"""ResNet-18/34 (BasicBlock) from build_yolact_resnet equal torchvision's resnet18/34.

Oracle: torchvision's own forward (conv1 -> bn1 -> relu -> maxpool -> layer1..4) with seeded
random weights and non-trivial batch-norm statistics, copied into ours key by key (torchvision
names -> official YOLACT names -> ours through the converter's rules, as official backbones load).
"""
import pytest
import torch
import torchvision

from yolact_d2.checkpoint.convert import map_key
from yolact_d2.modeling.backbone import build_yolact_resnet

BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.rand(m.running_mean.shape, generator=g) - 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.rand(m.bias.shape, generator=g) - 0.1)


def _torchvision_to_ours(tv_state):
    out = {}
    for k, v in tv_state.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        official = f"backbone.layers.{int(k[5]) - 1}{k[6:]}" if k.startswith("layer") else "backbone." + k
        matched, ours = map_key(official, {"num_fpn_inputs": 3})
        assert matched and ours.startswith("backbone.bottom_up."), k
        out[ours[len("backbone.bottom_up."):]] = v
    return out


@pytest.mark.parametrize("depth", [18, 34])
def test_matches_torchvision(depth):
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")().eval()
    _randomize_bn(tv, depth)
    ours = build_yolact_resnet(depth).eval()
    ours.load_state_dict(_torchvision_to_ours(tv.state_dict()), strict=True)  # every key filled, none extra
    assert [len(getattr(ours, f"res{i}")) for i in range(2, 6)] == BLOCKS[depth]
    x = torch.randn(2, 3, 75, 62)  # odd sizes: padding / rounding of every stride-2 step matters
    with torch.no_grad():
        feats = ours(x)
        c2 = tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))
        c3 = tv.layer2(c2)
        c4 = tv.layer3(c3)
        c5 = tv.layer4(c4)
    assert sorted(feats) == ["res3", "res4", "res5"]
    for name, want in (("res3", c3), ("res4", c4), ("res5", c5)):
        assert feats[name].shape == want.shape
        torch.testing.assert_close(feats[name], want, rtol=1e-4, atol=1e-4)
    shapes = ours.output_shape()
    assert [shapes[f].stride for f in ("res3", "res4", "res5")] == [8, 16, 32]
    assert [shapes[f].channels for f in ("res3", "res4", "res5")] == [128, 256, 512]
