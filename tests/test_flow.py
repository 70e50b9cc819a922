"""FlowNetMini against an independent functional re-statement of the official network, fed with
an official-layout state dict (github haotian-liu/yolact_edge, yolact_edge_vid config)."""
import pytest
import torch
import torch.nn.functional as F

from yolact_d2.checkpoint import convert_official_state_dict, synthetic_official_state_dict
from yolact_d2.modeling import FlowNetMini


@pytest.fixture(scope="module")
def official_flow_weights():
    sd = synthetic_official_state_dict("yolact_edge_vid_resnet50_config", seed=3)
    return {k: v for k, v in sd.items() if k.startswith("flow_net")}


def official_flow_net(sd, current_lateral, key_lateral):
    """The official forward written out with F.conv2d on the official keys (the spec, not our code):
    pre-conv both laterals, cat(current, key), conv1..conv3, pred3, then pred2 from
    [conv2, upfeat3(up(conv3)), upflow3(up(flow3))]."""

    def conv_lrelu(x, key, stride=1):
        return F.leaky_relu(F.conv2d(x, sd[key + ".weight"], sd[key + ".bias"], stride=stride, padding=1), 0.1)

    def pred(x, p):
        return (
            F.conv2d(x, sd[p + ".conv.weight"], None, padding=1),
            F.conv2d(x, sd[p + ".scale.weight"], sd[p + ".scale.bias"]),
            F.conv2d(x, sd[p + ".bias.weight"], sd[p + ".bias.bias"]),
        )

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    pre = "flow_net_pre_convs.convs.0.0"
    x = torch.cat([conv_lrelu(current_lateral, pre), conv_lrelu(key_lateral, pre)], dim=1)
    c1 = conv_lrelu(conv_lrelu(x, "flow_net.conv1.0.0"), "flow_net.conv1.1.0")
    c2 = conv_lrelu(conv_lrelu(c1, "flow_net.conv2.0.0", 2), "flow_net.conv2.1.0")
    c3 = conv_lrelu(conv_lrelu(c2, "flow_net.conv3.0.0", 2), "flow_net.conv3.1.0")
    p3 = pred(c3, "flow_net.pred3")
    upfeat = F.conv2d(up(c3, c2), sd["flow_net.upfeat3.weight"], None, padding=1)
    upflow = F.conv2d(up(p3[0], c2), sd["flow_net.upflow3.weight"], None, padding=1)
    p2 = pred(torch.cat([c2, upfeat, upflow], dim=1), "flow_net.pred2")
    return p3, p2


@torch.no_grad()
@pytest.mark.parametrize("size", [(69, 69), (30, 41)])  # 550 input's C3; an odd non-square grid
def test_matches_official_formula(official_flow_weights, size):
    converted, _ = convert_official_state_dict(official_flow_weights)
    net = FlowNetMini().eval()
    net.load_state_dict({k[len("flow_net."):]: v for k, v in converted.items()}, strict=True)
    torch.manual_seed(0)
    current, key = torch.randn(2, 1, 256, *size).unbind(0)
    ours = net(net.reduce(current), net.reduce(key))
    want = official_flow_net(official_flow_weights, current, key)
    assert len(ours) == 2  # the finest (1/1) prediction is skipped at inference
    h4, w4 = [(s + 1) // 2 for s in size]
    assert ours[0][0].shape == (1, 2, (h4 + 1) // 2, (w4 + 1) // 2) and ours[1][1].shape == (1, 256, h4, w4)
    for ours_scale, want_scale in zip(ours, want):
        for a, b in zip(ours_scale, want_scale):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_finest_prediction_for_training_and_untrained_warp_keeps_features():
    net = FlowNetMini().eval()
    x = torch.randn(1, 64, 20, 20)
    preds = net(x, x, finest=True)
    assert [p[0].shape[-1] for p in preds] == [5, 10, 20]
    # scale convs start with bias 1 and bias convs with 0 (official init): warp x 1 + 0 at start
    assert torch.equal(net.pred2.scale.bias, torch.ones(256)) and torch.equal(net.pred2.bias.bias, torch.zeros(256))
