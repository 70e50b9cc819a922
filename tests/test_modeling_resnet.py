"""The official-layout ResNet (from Detectron2 parts) equals torchvision's ResNet (= official YOLACT's),
and ResNet-18/34 (BasicBlocks, for YolactEdge) equal torchvision's resnet18/34."""
import pytest
import torch
import torchvision

from detectron2.layers import FrozenBatchNorm2d

from yolact_d2.checkpoint.convert import map_key
from yolact_d2.modeling.backbone import build_yolact_resnet


def _torchvision_to_ours(tv_state):
    """torchvision keys -> official YOLACT backbone keys -> ours (through the converter rules)."""
    out = {}
    for k, v in tv_state.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        if k.startswith("layer"):
            official = f"backbone.layers.{int(k[5]) - 1}{k[6:]}"
        else:
            official = "backbone." + k
        matched, ours = map_key(official, {"num_fpn_inputs": 3})
        assert matched and ours.startswith("backbone.bottom_up.")
        out[ours[len("backbone.bottom_up.") :]] = v
    return out


# torchvision resnet{depth}: C3-C5 channels (18/34: BasicBlocks, 50: official YOLACT bottlenecks)
CHANNELS = {18: [128, 256, 512], 34: [128, 256, 512], 50: [512, 1024, 2048]}


@pytest.mark.parametrize("depth", sorted(CHANNELS))
def test_matches_torchvision(depth):
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")().eval()
    with torch.no_grad():  # non-trivial BN statistics so the norm mapping matters
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    ours = build_yolact_resnet(depth).eval()
    ours.load_state_dict(_torchvision_to_ours(tv.state_dict()), strict=True)
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in ours.modules())
    x = torch.randn(1, 3, 67, 61)
    with torch.no_grad():
        feats = ours(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        c2 = tv.layer1(y)
        c3 = tv.layer2(c2)
        c4 = tv.layer3(c3)
        c5 = tv.layer4(c4)
    assert sorted(feats) == ["res3", "res4", "res5"]
    for name, want in (("res3", c3), ("res4", c4), ("res5", c5)):
        assert feats[name].shape == want.shape
        torch.testing.assert_close(feats[name], want, rtol=1e-4, atol=1e-4)
    shapes = ours.output_shape()
    assert [shapes[f].stride for f in ("res3", "res4", "res5")] == [8, 16, 32]
    assert [shapes[f].channels for f in ("res3", "res4", "res5")] == CHANNELS[depth]


@pytest.mark.parametrize("depth,blocks", [(18, [2, 2, 2, 2]), (34, [3, 4, 6, 3]), (101, [3, 4, 23, 3])])
def test_block_counts_match_torchvision_layout(depth, blocks):
    ours = build_yolact_resnet(depth)
    assert [len(getattr(ours, f"res{i}")) for i in range(2, 6)] == blocks  # 101: official resnet101_backbone args


def test_bad_depth_is_named():
    with pytest.raises(ValueError, match=r"depth must be one of \(18, 34, 50, 101, 152\).*got 35"):
        build_yolact_resnet(35)
