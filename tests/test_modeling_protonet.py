"""ProtoNet equals the official make_net(mask_proto_net) Sequential with the same weights."""
import torch
import torch.nn.functional as F
from torch import nn

from yolact_d2.checkpoint.convert import map_key
from yolact_d2.modeling import ProtoNet


class _Interpolate(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _official_proto_net(c=256, k=32):
    # [(256, 3, pad 1)] * 3 + [(None, -2, {}), (256, 3, pad 1)] + [(32, 1, {})], no last ReLU
    layers = []
    for _ in range(3):
        layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
    layers += [_Interpolate(), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, k, 1)]
    return nn.Sequential(*layers)


def test_equals_official_sequential():
    torch.manual_seed(0)
    official = _official_proto_net(16, 8)
    ours = ProtoNet(in_channels=16, num_prototypes=8, conv_dims=16)
    state = {}
    for key, value in official.state_dict().items():
        matched, target = map_key("proto_net." + key, {})
        assert matched
        state[target[len("protonet.") :]] = value
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 16, 69, 69)
    with torch.no_grad():
        got = ours(x)
        want = F.relu(official(x))  # official mask_proto_prototype_activation = relu
    assert got.shape == (2, 8, 138, 138)
    assert torch.equal(got, want)
