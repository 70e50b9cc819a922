"""FastMaskIoUNet (YOLACT++ mask re-scoring) on known inputs."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from yolact_d2.checkpoint.layouts import LAYOUT_DIR
from yolact_d2.modeling.maskiou import FastMaskIoUNet, min_mask_size

# The official key table ships with the package (setup.py package data): no machine paths.
TSV = Path(LAYOUT_DIR) / "yolact_plus_resnet50_config.keys.tsv"


def _averaging_net(num_classes, class_bias):
    """Every 3x3 conv averages its window over all input channels (bias 0); the class layer
    averages its 128 channels and adds class_bias[c]. A constant mask v then gives
    relu(v + class_bias[c]) for class c, whatever the spatial size."""
    net = FastMaskIoUNet(num_classes)
    with torch.no_grad():
        for m in net.convs:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                m.bias.zero_()
        net.convs[10].bias.copy_(torch.as_tensor(class_bias))
    return net


def test_constant_masks_hand_computed():
    net = _averaging_net(3, [0.0, -0.3, 0.25])
    masks = torch.stack([torch.full((138, 138), 0.8), torch.full((138, 138), 0.2)])
    iou = net(masks.unsqueeze(1))
    want = torch.tensor([[0.8, 0.5, 1.05], [0.2, 0.0, 0.45]])  # relu(v + b_c)
    torch.testing.assert_close(iou, want, rtol=1e-5, atol=1e-6)


def test_rescore_multiplies_by_iou_of_own_class():
    net = _averaging_net(3, [0.0, -0.3, 0.25])
    masks = torch.stack([torch.full((70, 70), 0.8), torch.full((70, 70), 0.2), torch.full((70, 70), 0.8)])
    classes = torch.tensor([1, 2, 0])
    scores = torch.tensor([0.9, 0.6, 0.5])
    torch.testing.assert_close(net.predict_class_iou(masks, classes), torch.tensor([0.5, 0.45, 0.8]))
    torch.testing.assert_close(net.rescore(scores, masks, classes),
                               torch.tensor([0.9 * 0.5, 0.6 * 0.45, 0.5 * 0.8]))


def test_matches_functional_official_statement():
    """Random weights, structured masks: five unpadded 3x3/2 conv+ReLU, 1x1 conv+ReLU, global max."""
    torch.manual_seed(0)
    net = FastMaskIoUNet(80).eval()
    yy, xx = torch.meshgrid(torch.arange(138.0), torch.arange(138.0), indexing="ij")
    masks = torch.stack([
        torch.sigmoid((40 - ((yy - 60) ** 2 + (xx - 70) ** 2).sqrt()) / 3),
        ((yy > 20) & (yy < 100) & (xx > 10) & (xx < 50)).float(),
        torch.rand(138, 138),
    ]).unsqueeze(1)
    x = masks
    convs = [m for m in net.convs if isinstance(m, torch.nn.Conv2d)]
    for conv in convs[:-1]:
        x = F.relu(F.conv2d(x, conv.weight, conv.bias, stride=2))
    assert tuple(x.shape[-2:]) == (3, 3)  # 138 -> 68 -> 33 -> 16 -> 7 -> 3
    x = F.relu(F.conv2d(x, convs[-1].weight, convs[-1].bias))
    want = F.max_pool2d(x, kernel_size=x.shape[2:]).flatten(1)
    with torch.no_grad():
        torch.testing.assert_close(net(masks), want)


def test_official_key_layout():
    official = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("maskiou_net."):
            k, shape, _ = line.split("\t")
            official[k.replace("maskiou_net.maskiou_net.", "convs.")] = eval(shape)
    ours = {k: list(v.shape) for k, v in FastMaskIoUNet(80).state_dict().items()}
    assert ours == official


def test_empty_and_bad_inputs():
    net = FastMaskIoUNet(5)
    assert net(torch.zeros(0, 1, 138, 138)).shape == (0, 5)
    assert net.rescore(torch.zeros(0), torch.zeros(0, 138, 138), torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert min_mask_size(5) == 63
    assert net(torch.zeros(1, 1, 63, 63)).shape == (1, 5)
    with pytest.raises(ValueError, match="63x63"):
        net(torch.zeros(1, 1, 62, 80))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.zeros(2, 138, 138))

