"""Official -> yolact_d2 weight conversion on synthetic official-layout state dicts."""
import os

import pytest
import torch
from checkpoint_helpers import load_and_report
from detectron2.config import LazyConfig, instantiate

from yolact_d2.checkpoint import (
    ConversionError,
    Rule,
    convert_official_state_dict,
    detect_variant,
    official_layout,
    synthetic_official_state_dict,
)
from yolact_d2.checkpoint import convert as convert_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from yolact_d2.tools import convert_yolact_weights  # noqa: E402


@pytest.fixture(scope="module")
def r50_expected():
    model = instantiate(LazyConfig.load(os.path.join(REPO, "configs/yolact/yolact_R_50_FPN_550.py")).model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r50_official():
    return synthetic_official_state_dict("yolact_resnet50_config", seed=0)


def test_complete_r50_maps_every_key(r50_official, r50_expected):
    out, summary = convert_official_state_dict(r50_official, r50_expected)
    assert set(out) == set(r50_expected)
    assert summary.mapped == len(r50_expected) == 301
    assert len(summary.dropped) == 53 and all(k.endswith("num_batches_tracked") for k in summary.dropped)
    assert summary.num_values == 31_218_063  # every float value of the official checkpoint
    # spot checks of the rules, values carried over untouched
    pairs = {
        "backbone.conv1.weight": "backbone.bottom_up.stem.conv1.weight",
        "backbone.bn1.running_var": "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.layers.0.0.downsample.0.weight": "backbone.bottom_up.res2.0.shortcut.weight",
        "backbone.layers.3.2.bn3.bias": "backbone.bottom_up.res5.2.conv3.norm.bias",
        "backbone.layers.1.0.conv2.weight": "backbone.bottom_up.res3.0.conv2.weight",
        "fpn.lat_layers.0.weight": "backbone.lateral_convs.2.weight",  # official index 0 = C5
        "fpn.pred_layers.2.bias": "backbone.output_convs.0.bias",  # official index 2 = P3
        "fpn.downsample_layers.1.weight": "backbone.downsample_convs.1.weight",
        "proto_net.8.weight": "protonet.convs_after_upsample.0.weight",
        "proto_net.10.bias": "protonet.proto_pred.bias",
        "prediction_layers.0.conf_layer.weight": "head.cls_score.weight",
        "prediction_layers.0.mask_layer.bias": "head.coef_pred.bias",
        "semantic_seg_conv.weight": "semantic_seg_conv.weight",
    }
    for official_key, ours in pairs.items():
        assert out[ours] is r50_official[official_key], official_key


def test_r101_layout_maps_completely():
    model = instantiate(LazyConfig.load(os.path.join(REPO, "configs/yolact/yolact_R_101_FPN_550.py")).model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: torch.empty(s, dtype=d) for k, s, d in official_layout("yolact_base_config")}
    out, summary = convert_official_state_dict(official, expected)
    assert set(out) == set(expected) and summary.num_values == 50_262_415
    for name in ("yolact_im400_config", "yolact_im700_config"):  # same keys as yolact_base
        assert [k for k, _, _ in official_layout(name)] == list(official)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["yolact_darknet53_config", "yolact_plus_resnet50_config", "yolact_plus_base_config"])
def test_every_official_layout_converts_for_its_default_config(layout):
    from yolact_d2.checkpoint import default_config_for

    official = {k: torch.empty(s, dtype=d) for k, s, d in official_layout(layout)}
    config = default_config_for(detect_variant(official))
    model = instantiate(LazyConfig.load(os.path.join(REPO, config)).model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out, summary = convert_official_state_dict(official, expected)
    assert set(out) == set(expected)
    floats = sum(v.numel() for v in official.values() if v.dtype.is_floating_point)
    assert summary.num_values == floats  # every float value of the official checkpoint is used


def test_missing_key_stops(r50_official, r50_expected):
    bad = dict(r50_official)
    del bad["backbone.layers.2.3.conv2.weight"]
    with pytest.raises(ConversionError, match=r"no weights for model key 'backbone\.bottom_up\.res4\.3\.conv2\.weight'"):
        convert_official_state_dict(bad, r50_expected)


def test_extra_key_stops(r50_official, r50_expected):
    bad = dict(r50_official)
    bad["prediction_layers.0.gate_layer.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError, match=r"official key 'prediction_layers\.0\.gate_layer\.weight'.*matches no conversion rule.*add_rules"):
        convert_official_state_dict(bad, r50_expected)
    bad = dict(r50_official)
    bad["backbone.layers.2.6.conv1.weight"] = torch.zeros(256, 1024, 1, 1)  # an R101 block in an R50 model
    with pytest.raises(ConversionError, match=r"maps to 'backbone\.bottom_up\.res4\.6\.conv1\.weight', which the model does not have"):
        convert_official_state_dict(bad, r50_expected)


def test_wrong_shape_stops(r50_official, r50_expected):
    bad = dict(r50_official)
    bad["prediction_layers.0.conf_layer.weight"] = torch.zeros(3 * 21, 256, 3, 3)
    with pytest.raises(ConversionError, match=r"'prediction_layers\.0\.conf_layer\.weight' has shape \[63, 256, 3, 3\].*needs \[243, 256, 3, 3\].*class count"):
        convert_official_state_dict(bad, r50_expected)


def test_rules_are_extensible(r50_official):
    rules = [Rule(r"maskiou_net\.maskiou_net\.(\d+)\.(weight|bias)", r"mask_rescoring.layers.\1.\2")] + convert_module.RULES
    sd = {"maskiou_net.maskiou_net.4.bias": torch.zeros(2), "semantic_seg_conv.bias": torch.zeros(80)}
    out, _ = convert_official_state_dict(sd, rules=rules)
    assert list(out) == ["mask_rescoring.layers.4.bias", "semantic_seg_conv.bias"]
    with pytest.raises(ConversionError, match="both map to"):
        convert_official_state_dict({"a": torch.zeros(1), "b": torch.zeros(1)}, rules=[Rule(r"a|b", "same")])


def test_detect_variant():
    def layout(name):
        return {k: torch.empty(s, dtype=d) for k, s, d in official_layout(name)}

    assert detect_variant(layout("yolact_resnet50_config")) == {
        "plus": False, "edge": False, "video": False, "spa": False, "backbone": "resnet", "depth": 50,
        "num_anchors": 3, "num_classes": 80,
    }
    assert detect_variant(layout("yolact_base_config"))["depth"] == 101
    assert detect_variant(layout("yolact_darknet53_config"))["backbone"] == "darknet53"
    plus = detect_variant(layout("yolact_plus_base_config"))
    assert plus["plus"] and plus["num_anchors"] == 9 and plus["num_classes"] == 80
    with pytest.raises(ConversionError, match="cannot tell the backbone"):
        detect_variant({"fpn.lat_layers.0.weight": torch.zeros(1)})


@pytest.mark.slow
def test_tool_end_to_end(tmp_path, r50_official, capsys):
    src, dst = tmp_path / "yolact_resnet50_54_800000.pth", tmp_path / "out" / "converted.pth"
    torch.save(r50_official, src)
    assert convert_yolact_weights.main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "YOLACT resnet-50, 80 classes" in printed and "converted 301 tensors (31,218,063 values)" in printed
    model = instantiate(LazyConfig.load(os.path.join(REPO, "configs/yolact/yolact_R_50_FPN_550.py")).model)
    incompatible = load_and_report(model, dst)  # DetectionCheckpointer(model).load, as users call it
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    torch.testing.assert_close(model.head.cls_score.weight, r50_official["prediction_layers.0.conf_layer.weight"])

    # errors go to stderr with exit status 1, nothing written
    bad = dict(r50_official)
    del bad["fpn.lat_layers.1.bias"]
    torch.save(bad, src)
    assert convert_yolact_weights.main([str(src), str(tmp_path / "never.pth")]) == 1
    assert "error: the checkpoint has no weights for model key 'backbone.lateral_convs.1.bias'" in capsys.readouterr().err
    assert not (tmp_path / "never.pth").exists()

    # unsafe pickles are refused (weights_only=True)
    torch.save({"model": r50_official, "evil": object.__new__(Rule)}, src)
    assert convert_yolact_weights.main([str(src), str(tmp_path / "never.pth")]) == 1
    assert "weights_only=True" in capsys.readouterr().err


@pytest.mark.slow
def test_tool_imagenet_backbone(tmp_path, capsys):
    import torchvision

    tv = torchvision.models.resnet50().state_dict()
    src, dst = tmp_path / "resnet50-19c8e357.pth", tmp_path / "r50_imagenet.pth"
    torch.save(tv, src)
    assert convert_yolact_weights.main([str(src), str(dst)]) == 1
    assert "pass --config" in capsys.readouterr().err
    cfg = os.path.join(REPO, "configs/yolact/yolact_R_50_FPN_550.py")
    assert convert_yolact_weights.main([str(src), str(dst), "--config", cfg]) == 0
    assert "backbone only" in capsys.readouterr().out
    model = instantiate(LazyConfig.load(cfg).model)
    incompatible = load_and_report(model, dst)
    assert not incompatible.unexpected_keys
    assert all(not k.startswith("backbone.bottom_up.") for k in incompatible.missing_keys)
    torch.testing.assert_close(model.backbone.bottom_up.res4[5].conv2.weight, tv["layer3.5.conv2.weight"])
    torch.testing.assert_close(model.backbone.bottom_up.stem.conv1.norm.running_var, tv["bn1.running_var"])


# ------------------------------------------------------------------------------ YolactEdge
EDGE_LAYOUTS = {  # official YolactEdge config -> (our default config, float values in the checkpoint)
    "yolact_edge_resnet50_config": ("configs/yolact_edge/yolact_edge_R_50_FPN_550.py", 31_218_063),
    "yolact_edge_config": ("configs/yolact_edge/yolact_edge_R_101_FPN_550.py", 50_262_415),
    "yolact_edge_mobilenetv2_config": ("configs/yolact_edge/yolact_edge_mobilenetv2_FPN_550.py", 9_062_927),
    "yolact_edge_vid_resnet50_config": ("configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py", 35_442_367),
    "yolact_edge_vid_config": ("configs/yolact_edge/yolact_edge_vid_R_101_FPN_550.py", 54_486_719),
}


def empty_layout(name):
    return {k: torch.empty(s, dtype=d) for k, s, d in official_layout(name)}


def expected_of(config):
    model = instantiate(LazyConfig.load(os.path.join(REPO, config)).model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def edge_vid_r50():
    return synthetic_official_state_dict("yolact_edge_vid_resnet50_config", seed=0), expected_of(
        "configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py"
    )


def test_edge_video_r50_maps_every_key(edge_vid_r50):
    official, expected = edge_vid_r50
    out, summary = convert_official_state_dict(official, expected)
    assert set(out) == set(expected) and summary.num_values == 35_442_367
    pairs = {  # official key -> ours, read off the official model code (yolact_edge/yolact.py)
        "fpn_phase_1.lat_layers.0.weight": "backbone.lateral_convs.2.weight",  # official index 0 = C5
        "fpn_phase_2.pred_layers.2.bias": "backbone.output_convs.0.bias",
        "fpn_phase_2.downsample_layers.1.weight": "backbone.downsample_convs.1.weight",
        "flow_net_pre_convs.convs.0.0.weight": "flow_net.pre_conv.0.weight",
        "flow_net.conv2.0.0.weight": "flow_net.conv2.0.0.weight",
        "flow_net.pred2.conv.weight": "flow_net.pred2.flow.weight",
        "flow_net.pred3.scale.bias": "flow_net.pred3.scale.bias",
        "flow_net.upflow3.weight": "flow_net.upflow3.weight",
        "spa.refine_convs.1.0.weight": "spa.refine_convs.1.0.weight",
        "prediction_layers.0.conf_layer.weight": "head.cls_score.weight",
    }
    for official_key, ours in pairs.items():
        assert out[ours] is official[official_key], official_key


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(EDGE_LAYOUTS))
def test_every_edge_layout_converts_for_its_default_config(layout):
    from yolact_d2.checkpoint import default_config_for

    official = empty_layout(layout)
    config, floats = EDGE_LAYOUTS[layout]
    assert default_config_for(detect_variant(official)) == config
    out, summary = convert_official_state_dict(official, expected_of(config))
    assert set(out) == set(expected_of(config))
    layers_7_8 = sum(v.numel() for k, v in official.items()
                     if k.startswith(("backbone.layers.7.", "backbone.layers.8.")) and v.dtype.is_floating_point)
    assert summary.num_values + (layers_7_8 if "mobilenet" in layout else 0) == floats


def test_edge_detect_variant():
    vid = detect_variant(empty_layout("yolact_edge_vid_config"))
    assert vid == {"plus": False, "edge": True, "video": True, "spa": True, "backbone": "resnet", "depth": 101,
                   "num_anchors": 3, "num_classes": 40}
    mobile = detect_variant(empty_layout("yolact_edge_mobilenetv2_config"))
    assert mobile["backbone"] == "mobilenetv2" and mobile["edge"] and not mobile["video"]
    assert not detect_variant(empty_layout("yolact_resnet50_config"))["edge"]


def test_image_checkpoint_into_video_config_names_the_missing_parts(edge_vid_r50):
    _, expected = edge_vid_r50
    for image in ("yolact_edge_resnet50_config", "yolact_resnet50_config"):  # YolactEdge COCO, plain YOLACT
        official = synthetic_official_state_dict(image, seed=0)
        official["prediction_layers.0.conf_layer.weight"] = torch.zeros(123, 256, 3, 3)  # 40 classes
        official["prediction_layers.0.conf_layer.bias"] = torch.zeros(123)
        official["semantic_seg_conv.weight"] = torch.zeros(40, 256, 1, 1)
        official["semantic_seg_conv.bias"] = torch.zeros(40)
        with pytest.raises(ConversionError, match=r"no weights for the video parts of this model: "
                           r"flow_net\.\* \(33 keys\), spa\.\* \(4 keys\)\. It is an image checkpoint"):
            convert_official_state_dict(official, expected)


def test_edge_missing_extra_wrong_shape(edge_vid_r50):
    official, expected = edge_vid_r50
    bad = dict(official)
    del bad["flow_net.pred2.scale.weight"]
    with pytest.raises(ConversionError, match=r"no weights for model key 'flow_net\.pred2\.scale\.weight' \(1 missing"):
        convert_official_state_dict(bad, expected)
    bad = dict(official)
    bad["flow_net.pred4.conv.weight"] = torch.zeros(2, 256, 3, 3)
    with pytest.raises(ConversionError, match=r"official key 'flow_net\.pred4\.conv\.weight'.*matches no conversion rule"):
        convert_official_state_dict(bad, expected)
    bad = dict(official)
    bad["flow_net_pre_convs.convs.0.0.weight"] = torch.zeros(32, 256, 3, 3)  # reduce_channels 32, not 64
    with pytest.raises(ConversionError, match=r"'flow_net_pre_convs\.convs\.0\.0\.weight' has shape \[32, 256, 3, 3\] "
                       r"but model key 'flow_net\.pre_conv\.0\.weight' needs \[64, 256, 3, 3\]"):
        convert_official_state_dict(bad, expected)


@pytest.mark.slow
def test_tool_picks_the_edge_video_config(tmp_path, capsys, edge_vid_r50):
    official, _ = edge_vid_r50
    src, dst = tmp_path / "yolact_edge_vid_resnet50_847_50000.pth", tmp_path / "edge.pth"
    torch.save(official, src)
    assert convert_yolact_weights.main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "YolactEdge video resnet-50, 40 classes" in printed
    assert "configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py" in printed
    model = instantiate(LazyConfig.load(os.path.join(REPO, "configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py")).model)
    incompatible = load_and_report(model, dst)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    torch.testing.assert_close(model.flow_net.pred2.flow.weight, official["flow_net.pred2.conv.weight"])
