"""MobileNetV2 backbone against torchvision's mobilenet_v2 (the independent oracle) and the
official YolactEdge layer grouping."""
import pytest
import torch
import torchvision

from yolact_d2.checkpoint import convert_official_state_dict, official_layout
from yolact_d2.modeling.backbone import build_mobilenet_v2
from yolact_d2.modeling.backbone.mobilenet import stage_ranges


@pytest.fixture(scope="module")
def torchvision_net():
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics so freezing them is really checked
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return net


@torch.no_grad()
def test_outputs_equal_torchvision_features(torchvision_net):
    ours = build_mobilenet_v2().eval()
    tv_state = {k[len("features."):]: v for k, v in torchvision_net.state_dict().items() if k.startswith("features.")}
    missing, unexpected = ours.features.load_state_dict(tv_state, strict=False)
    assert not missing  # every module we build is torchvision's (num_batches_tracked: FrozenBN has none)
    assert {k.split(".")[0] for k in unexpected if not k.endswith("num_batches_tracked")} == {"17", "18"}
    x = torch.randn(2, 3, 128, 96)
    outs = ours(x)
    # oracle: torchvision's own forward, cut at the official YolactEdge layer boundaries 3, 4, 6
    y, taps = x, {}
    for i, block in enumerate(torchvision_net.features):
        y = block(y)
        taps[i + 1] = y
    for name, end in (("stage3", 7), ("stage4", 11), ("stage6", 17)):
        torch.testing.assert_close(outs[name], taps[end], rtol=1e-5, atol=1e-5)
    shapes = ours.output_shape()
    assert [(shapes[n].channels, shapes[n].stride) for n in ("stage3", "stage4", "stage6")] == [(32, 8), (64, 16), (160, 32)]
    assert [tuple(outs[n].shape[-2:]) for n in ("stage3", "stage4", "stage6")] == [(16, 12), (8, 6), (4, 3)]
    assert torch.equal(ours.forward_until(x, "stage3"), outs["stage3"])
    assert any(isinstance(m, torch.nn.ReLU6) for m in ours.modules())


def test_official_layers_map_onto_torchvision_blocks():
    """Official backbone.layers.{i}.{j} is features[start_i + j]: each official tensor's shape must
    fit the torchvision module it lands on (stage by stage: 1, 1, 2, 3, 4, 3, 3 blocks)."""
    official = {k: torch.empty(s, dtype=d) for k, s, d in official_layout("yolact_edge_mobilenetv2_config")}
    official = {k: v for k, v in official.items() if k.startswith("backbone.")}
    out, summary = convert_official_state_dict(official)
    tv = {f"backbone.bottom_up.features.{k[len('features.'):]}": tuple(v.shape)
          for k, v in torchvision.models.mobilenet_v2(weights=None).state_dict().items() if k.startswith("features.")}
    assert all(tuple(v.shape) == tv[k] for k, v in out.items())
    assert out["backbone.bottom_up.features.10.conv.2.weight"].shape == (64, 384, 1, 1)  # official layers.4.3
    dropped = {k.split(".")[2] for k in summary.dropped if not k.endswith("num_batches_tracked")}
    assert dropped == {"7", "8"}  # never read by the FPN
    assert stage_ranges()[3] == (4, 7) and stage_ranges()[6] == (14, 17)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown out_features \['res3'\]; choose from"):
        build_mobilenet_v2(out_features=["res3"])
    with pytest.raises(ValueError, match="expects an \\(N, 3, H, W\\) image tensor"):
        build_mobilenet_v2()(torch.zeros(1, 4, 32, 32))
