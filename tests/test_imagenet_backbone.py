"""tools/convert_imagenet_backbone.py (yolact_d2.checkpoint.imagenet): ImageNet weights become a
backbone-only train.init_checkpoint.

Oracle: torchvision's own ResNet-50 forward. A torchvision resnet50 with seeded weights and
non-trivial batch-norm statistics is saved as torchvision saves its ImageNet files, converted, and
loaded through the training init path (YolactCheckpointer.resume_or_load); our backbone's
res3/res4/res5 must equal torchvision's layer2/layer3/layer4 outputs."""
import os

import pytest
import torch

import checkpoint_fixtures as cf
from yolact_d2.checkpoint import ConversionError, official_layout
from yolact_d2.checkpoint.imagenet import convert_imagenet_backbone, detect_imagenet_backbone
from yolact_d2.engine import YolactCheckpointer
from yolact_d2.tools import convert_imagenet_backbone as tool

R50 = os.path.join(cf.REPO, "configs", "yolact", "yolact_R_50_FPN_550.py")


@torch.no_grad()
def _seeded_torchvision_resnet50():
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50().eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # defaults (mean 0, var 1, w 1, b 0) would hide BN mix-ups
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.2, 0.6)  # small: activations stay O(1) through 16 blocks
            m.bias.normal_(0, 0.05)
    return net


@pytest.mark.slow
def test_torchvision_resnet50_converts_to_the_same_features(tmp_path, capsys):
    from detectron2.config import LazyConfig, instantiate

    tv = _seeded_torchvision_resnet50()
    src, dst = tmp_path / "resnet50-0676ba61.pth", tmp_path / "r50_imagenet.pth"
    torch.save(tv.state_dict(), str(src))
    assert tool.main([str(src), str(dst)]) == 0  # depth and config from the file
    out = capsys.readouterr().out
    assert "ImageNet ResNet-50" in out and "configs/yolact/yolact_R_50_FPN_550.py" in out

    model = instantiate(LazyConfig.load(R50).model).eval()
    YolactCheckpointer(model, str(tmp_path / "run")).resume_or_load(str(dst), resume=False)  # train init path
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.backbone.bottom_up(x)
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        want = {}
        for name, layer in (("res2", tv.layer1), ("res3", tv.layer2), ("res4", tv.layer3), ("res5", tv.layer4)):
            t = layer(t)
            want[name] = t
    for name in ("res3", "res4", "res5"):
        assert ours[name].shape == want[name].shape
        torch.testing.assert_close(ours[name], want[name], rtol=1e-4, atol=1e-4 * float(want[name].abs().max()))
    assert float(want["res5"].abs().max()) > 0.1  # features are not degenerate


def test_official_darknet53_imagenet_file():
    """official YOLACT's darknet53.pth is its DarkNetBackbone state dict (keys of the official key
    table without the `backbone.` prefix): every key of our DarkNet-53 backbone is filled, by the
    rename stated here (_preconv.{0,1} -> stem(.norm), layers.s.b.convj.{0,1} -> dark{s+1}.b.convj(.norm))."""
    from detectron2.config import LazyConfig, instantiate

    g = torch.Generator().manual_seed(0)
    darknet = {
        k[len("backbone."):]: torch.randn(shape, generator=g) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
        for k, shape, dtype in official_layout("yolact_darknet53_config")
        if k.startswith("backbone.")
    }
    assert detect_imagenet_backbone(darknet) == {"backbone": "darknet53"}
    model = instantiate(LazyConfig.load(os.path.join(cf.REPO, "configs/yolact/yolact_D_53_FPN_550.py")).model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted, summary, _ = convert_imagenet_backbone(darknet, shapes)
    assert set(converted) == {k for k in shapes if k.startswith("backbone.bottom_up.")}
    assert torch.equal(converted["backbone.bottom_up.stem.weight"], darknet["_preconv.0.weight"])
    assert torch.equal(converted["backbone.bottom_up.dark3.4.conv2.norm.running_var"], darknet["layers.2.4.conv2.1.running_var"])
    assert all(k.endswith("num_batches_tracked") for k in summary.dropped)


def test_other_files_are_refused_with_the_reason(tmp_path, capsys):
    # an official YOLACT detection checkpoint belongs to the other converter
    official = {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7), "fpn.lat_layers.0.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match="tools/convert_yolact_weights.py"):
        detect_imagenet_backbone(official)
    # a ResNet-18 has no default config: --config is asked for, nothing written
    import torchvision

    src = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), str(src))
    assert tool.main([str(src), str(tmp_path / "never.pth")]) == 1
    assert "pass --config" in capsys.readouterr().err and not (tmp_path / "never.pth").exists()
