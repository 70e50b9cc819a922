"""yolact_d2.deploy.quantize: int8 (ONNX Runtime static QDQ) against fp32, the per-part choice,
the calibration cache, and int8's errors.

Oracles: the fp32 Predictor (PyTorch; test_export shows the fp32 ONNX equals it within 1e-4) on
the same seeded weights, its detections matched by class and box IoU; the exported graph's own
weight names for which convs are int8; file mtimes and a calibration that must not run for the cache.
Model: configs/shapes/yolact_shapes_tiny.py (64x64 input, 4-channel backbone), calibrated on its
16 generated training images.
"""
import os

import cv2
import numpy as np
import pytest
import torch

import inference_fixtures as fx
from detectron2.data import DatasetCatalog
from detectron2.structures import pairwise_iou
from yolact_d2 import Predictor, VideoPredictor
from yolact_d2.deploy import precision as prec
from yolact_d2.deploy import quantize as q

TINY = os.path.join(fx.REPO, "configs", "shapes", "yolact_shapes_tiny.py")
# Measured here (seeded tiny model, every part int8, 4 val + 4 train images, top 5 each): twins
# found 35/40 (the seeded model's scores are close together, so ranks swap), score difference
# <= 0.003, mask IoU mean 0.956, 34/35 >= 0.75 (seeded, untrained prototypes leave many pixels
# near the 0.5 threshold: one small mask flipped to IoU 0). Stated bounds, with margin for CPUs
# whose int8 kernels differ (AVX2 without VNNI):
TOP = 5
MIN_TWIN_FRACTION = 0.7  # of the fp32 top detections found at int8 (same class, box IoU >= 0.8)
SCORE_TOL = 0.01
MEAN_MASK_IOU = 0.9
GOOD_MASK_IOU, MIN_GOOD_FRACTION = 0.75, 0.85

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return fx.write_checkpoint(str(tmp_path_factory.mktemp("int8") / "tiny.pth"), config=TINY, opts=[])


@pytest.fixture(scope="module")
def int8_predictor(tiny_weights):
    return Predictor(TINY, tiny_weights, device="cpu", precision="int8")  # calibration: the config's train set


def _shapes_images():
    # registered when the tiny config was loaded (the predictor fixtures load it first)
    files = [d["file_name"] for name in ("shapes_tiny_val", "shapes_tiny_train") for d in DatasetCatalog.get(name)[:4]]
    return [cv2.imread(f) for f in files]


def _mask_iou(a, b):
    inter = (a & b).sum().item()
    union = (a | b).sum().item()
    return 1.0 if union == 0 else inter / union


def _top_twins(want, got, score_tol):
    """Mask IoUs of fp32's top detections with their int8 twin (same class, box IoU >= 0.8; None:
    no twin); each twin's score within score_tol."""
    assert got.image_size == want.image_size and len(want) >= TOP
    ious = pairwise_iou(want.pred_boxes[:TOP], got.pred_boxes)
    result = []
    for i in range(TOP):
        candidates = torch.where(got.pred_classes == want.pred_classes[i], ious[i], torch.zeros_like(ious[i]))
        j = int(candidates.argmax())
        if candidates[j] < 0.8:
            result.append(None)
            continue
        assert abs(float(got.scores[j] - want.scores[i])) <= score_tol
        result.append(_mask_iou(got.pred_masks[j], want.pred_masks[i]))
    return result


def test_int8_matches_fp32(tiny_weights, int8_predictor):
    fp32 = Predictor(TINY, tiny_weights, device="cpu")
    twins = []
    for image in _shapes_images():
        want, got = fp32(image), int8_predictor(image)
        assert got.pred_masks.shape[1:] == image.shape[:2]
        twins += _top_twins(want, got, SCORE_TOL)
    mask_ious = [t for t in twins if t is not None]
    found, total = len(mask_ious), len(twins)
    assert found >= MIN_TWIN_FRACTION * total, f"only {found}/{total} fp32 top detections found at int8"
    assert np.mean(mask_ious) >= MEAN_MASK_IOU, mask_ious
    assert np.mean(np.array(mask_ious) >= GOOD_MASK_IOU) >= MIN_GOOD_FRACTION, mask_ious


def _int8_by_part(path):
    """{part: {whether its convs read a dequantized int8 weight}} of an int8 ONNX file."""
    import onnx

    proto = onnx.load(path)
    producers = {out: node for node in proto.graph.node for out in node.output}
    int8_by_part = {}
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        dq = producers.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            weight, int8 = dq.input[0], True
            assert proto.graph.initializer and any(
                i.name == weight and i.data_type == onnx.TensorProto.INT8 for i in proto.graph.initializer
            ), f"{weight}: int8 weights expected"
        else:
            weight, int8 = node.input[1], False
        int8_by_part.setdefault(q._part_of(weight.replace("_quantized", "")), set()).add(int8)
    return int8_by_part


def test_only_chosen_parts_are_int8(tiny_weights, int8_predictor):
    """Every conv of a chosen part reads a dequantized int8 weight, no conv of another part does."""
    assert _int8_by_part(int8_predictor.int8_path) == {p: {p in q.DEFAULT_INT8_PARTS} for p in q.PARTS}
    edge = Predictor(TINY, tiny_weights, device="cpu", precision="int8", int8_parts=("backbone", "protonet"))
    assert edge.int8_path != int8_predictor.int8_path  # the parts are part of the cache key
    assert _int8_by_part(edge.int8_path) == {"backbone": {True}, "protonet": {True}, "fpn": {False}, "head": {False}}


def test_follower_nodes_take_the_part_of_the_conv_upstream():
    """Hand-made graph: a Relu / MaxPool goes int8 with the nearest Conv upstream of its first
    input, through weightless ops (Add, Resize), and not with a Conv of another part."""
    from onnx import helper

    def conv(name, x, y):
        return helper.make_node("Conv", [x, name + ".weight"], [y], name=name)

    nodes = [
        conv("c1", "images", "t1"),
        helper.make_node("Relu", ["t1"], ["t2"], name="r1"),
        helper.make_node("MaxPool", ["t2"], ["t3"], name="p1", kernel_shape=[3, 3]),
        conv("c2", "t3", "t4"),
        helper.make_node("Add", ["t4", "t3"], ["t5"], name="a1"),
        helper.make_node("Relu", ["t5"], ["t6"], name="r2"),
        helper.make_node("Resize", ["t6", "", "scales"], ["t7"], name="rs"),
        helper.make_node("Relu", ["t7"], ["t8"], name="r4"),
        conv("c3", "t8", "t9"),
        helper.make_node("Relu", ["t9"], ["t10"], name="r3"),
        helper.make_node("Relu", ["images"], ["t11"], name="r_input"),  # no Conv upstream
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    assert q.follower_nodes(model, ["c1", "c2"]) == ["r1", "p1", "r2", "r4"]
    assert q.follower_nodes(model, ["c3"]) == ["r3"]
    assert q.follower_nodes(model, []) == []


def test_cache_reused_and_rebuilt(tiny_weights, int8_predictor, tmp_path, monkeypatch):
    path = int8_predictor.int8_path
    assert os.path.dirname(path) == os.path.dirname(tiny_weights)
    assert os.path.basename(path).startswith("tiny.pth.int8.") and path.endswith(".onnx")
    mtime = os.stat(path).st_mtime_ns
    # same weights, config, calibration: no calibration runs, the file is not rewritten
    monkeypatch.setattr(q, "quantize_onnx_int8", lambda *a, **k: pytest.fail("re-calibrated on the same weights"))
    again = Predictor(TINY, tiny_weights, device="cpu", precision="int8")
    assert again.int8_path == path and os.stat(path).st_mtime_ns == mtime
    image = _shapes_images()[0]
    assert torch.equal(again(image).pred_classes, int8_predictor(image).pred_classes)
    monkeypatch.undo()
    # other weights: another cache file, calibrated anew
    other = fx.write_checkpoint(str(tmp_path / "tiny.pth"), seed=1, config=TINY, opts=[])
    rebuilt = Predictor(TINY, other, device="cpu", precision="int8")
    other_path = rebuilt.int8_path
    assert os.path.dirname(other_path) == str(tmp_path) and os.path.isfile(other_path)
    assert os.path.basename(other_path) != os.path.basename(path)
    # a post-processing setting changed after the config (score_threshold=) is in the graph: rebuilt
    stricter = Predictor(TINY, other, device="cpu", precision="int8", score_threshold=0.5)
    assert stricter.int8_path != other_path and bool((stricter(image).scores > 0.5).all())
    # a calibration folder is another calibration: another hash
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, img in enumerate(_shapes_images()[:3]):
        cv2.imwrite(str(folder / f"{i}.png"), img)
    files = q.calibration_files(None, str(folder))
    assert len(files) == 3
    assert q.int8_cache_path(other, {"a": 1}, files) != q.int8_cache_path(other, {"a": 1}, files[:2])
    assert q.int8_cache_path(other, {"a": 1}, files) != q.int8_cache_path(other, {"a": 2}, files)


def test_int8_errors(tiny_weights, tmp_path, monkeypatch):
    with pytest.raises(prec.PrecisionError, match="CPU"):
        prec.check_precision("int8", "cuda")
    real_find_spec = __import__("importlib").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda m, *a: None if m == "onnxruntime" else real_find_spec(m, *a))
    with pytest.raises(prec.PrecisionError, match="pip install onnxruntime"):
        Predictor(TINY, tiny_weights, device="cpu", precision="int8")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="needs a weights file"):
        Predictor(TINY, None, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="not a YolactEdge video model"):  # int8 video needs a video config
        VideoPredictor(TINY, tiny_weights, device="cpu", precision="int8")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        Predictor(TINY, tiny_weights, device="cpu", precision="int8", calibration=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        q.calibration_files(None, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown"):
        q._check_parts(["backbone", "neck"])
    with pytest.raises(ValueError, match="uint8"):
        q.quantize_onnx_int8("x.onnx", "y.onnx", [np.zeros((8, 8), np.uint8)])


def test_calibration_from_a_dataset_without_its_json(tmp_path):
    """A COCO video config's default calibration (its training set) when the annotation json is not
    there: Detectron2's bare FileNotFoundError becomes one naming the dataset and calibration=."""
    from detectron2.config import LazyConfig
    from detectron2.data.datasets import register_coco_instances

    name = "test_quantize_missing_json"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(tmp_path / "missing.json"), str(tmp_path))
    cfg = LazyConfig.load(os.path.join(fx.REPO, "configs", "yolact_edge", "yolact_edge_vid_R_50_FPN_550.py"))
    cfg.dataloader.train.dataset.names = name
    with pytest.raises(FileNotFoundError, match=rf"dataset '{name}' .*missing\.json.*[Pp]ass calibration=<folder"):
        q.calibration_files(cfg, None)


def test_train_net_eval_int8_uses_the_predictors_model(tiny_weights, int8_predictor, tmp_path, monkeypatch):
    """--eval-only --precision int8: Detectron2's AP of the same calibrated file the Predictor made
    (no re-calibration), and the AP of the fp32 model evaluated the same way, within 2 points."""
    from yolact_d2.tools import train_net

    def evaluate(precision):
        overrides = [f"train.init_checkpoint={tiny_weights}", f"train.output_dir={tmp_path / precision}"]
        args = train_net.parse_args(["--config-file", TINY, "--eval-only", "--precision", precision] + overrides)
        return train_net.main(args)

    fp32 = evaluate("fp32")
    monkeypatch.setattr(q, "quantize_onnx_int8", lambda *a, **k: pytest.fail("train_net re-calibrated"))
    int8 = evaluate("int8")
    for task in ("bbox", "segm"):
        assert abs(int8[task]["AP"] - fp32[task]["AP"]) <= 2.0, (task, int8[task], fp32[task])


# ------------------------------------------------------------------ YolactEdge video (two graphs)
# Seeded YolactEdge R18 video model at 128 (tests/test_video_predictor.py's), calibrated on a
# folder of 10 moving frames (one video: keyframes 0 and 5, 8 warped pairs). Measured here, int8 vs
# fp32 on 2 sequences of a keyframe + 4 warped frames, top 5 each: twins 46/50, score difference
# <= 0.0074 (keyframes <= 0.001: the warped frames add the int8 flow net's error), mask IoU mean
# 0.96, 43/46 >= 0.75 (seeded, untrained prototypes: three small masks flipped). Stated bounds:
VIDEO_SCORE_TOL = 0.02
VIDEO_MEAN_MASK_IOU = 0.85


@pytest.fixture(scope="module")
def video_setup(tmp_path_factory):
    import test_video_predictor as tv

    root = tmp_path_factory.mktemp("int8_video")
    weights = fx.write_checkpoint(str(root / "edge_r18.pth"), config=tv.VID_R18, opts=tv.OPTS)
    calib = root / "frames"
    calib.mkdir()
    for i, frame in enumerate(tv.moving_frames(10, seed=3)):
        cv2.imwrite(str(calib / f"{i:03d}.png"), frame)
    int8 = VideoPredictor(tv.VID_R18, weights, device="cpu", opts=tv.OPTS, precision="int8", calibration=str(calib))
    return tv, weights, str(calib), int8


def test_video_int8_matches_fp32(video_setup):
    tv, weights, _, int8 = video_setup
    fp32 = VideoPredictor(tv.VID_R18, weights, device="cpu", opts=tv.OPTS)
    twins = []
    for seed in (0, 1):
        fp32.reset()
        int8.reset()
        for frame in tv.moving_frames(5, seed=seed):
            want, got = fp32(frame), int8(frame)
            assert int8.last_was_keyframe == fp32.last_was_keyframe  # the same schedule drives both graphs
            twins += _top_twins(want, got, VIDEO_SCORE_TOL)
    mask_ious = [t for t in twins if t is not None]
    found, total = len(mask_ious), len(twins)
    assert int8.num_keyframes == 1 and fp32.num_keyframes == 1
    assert found >= MIN_TWIN_FRACTION * total, f"only {found}/{total} fp32 top detections found at int8"
    assert np.mean(mask_ious) >= VIDEO_MEAN_MASK_IOU, mask_ious
    assert np.mean(np.array(mask_ious) >= GOOD_MASK_IOU) >= MIN_GOOD_FRACTION, mask_ious


def test_video_int8_graphs_and_parts(video_setup):
    """Both cached graphs next to the weights; int8 convs exactly in the default video parts
    (flow_net yes in both graphs, SPA float: YolactEdge's vid recipe on top of the image default)."""
    _, weights, _, int8 = video_setup
    key, warped = int8.int8_paths
    assert os.path.dirname(key) == os.path.dirname(weights)
    assert key.endswith(".keyframe.onnx") and warped.endswith(".warped.onnx") and key[:-14] == warped[:-12]
    want = {p: {p in q.DEFAULT_VIDEO_INT8_PARTS} for p in q.VIDEO_PARTS}
    assert _int8_by_part(warped) == want
    assert _int8_by_part(key) == {p: v for p, v in want.items() if p != "spa"}  # no SPA on keyframes


def test_video_int8_cache_reused_and_rebuilt(video_setup, tmp_path, monkeypatch):
    tv, weights, calib, int8 = video_setup
    mtimes = [os.stat(p).st_mtime_ns for p in int8.int8_paths]
    monkeypatch.setattr(q, "quantize_onnx_int8", lambda *a, **k: pytest.fail("re-calibrated on the same weights"))
    again = VideoPredictor(tv.VID_R18, weights, device="cpu", opts=tv.OPTS, precision="int8", calibration=calib)
    assert again.int8_paths == int8.int8_paths
    assert [os.stat(p).st_mtime_ns for p in again.int8_paths] == mtimes
    frame = tv.moving_frames(1)[0]
    int8.reset()
    assert torch.equal(again(frame).pred_classes, int8(frame).pred_classes)
    monkeypatch.undo()
    other = fx.write_checkpoint(str(tmp_path / "edge_r18.pth"), seed=1, config=tv.VID_R18, opts=tv.OPTS)
    rebuilt = VideoPredictor(tv.VID_R18, other, device="cpu", opts=tv.OPTS, precision="int8", calibration=calib,
                             int8_parts=("backbone", "protonet", "flow_net"))  # YolactEdge's own vid recipe
    assert all(os.path.isfile(p) and os.path.dirname(p) == str(tmp_path) for p in rebuilt.int8_paths)
    assert os.path.basename(rebuilt.int8_paths[0]) != os.path.basename(int8.int8_paths[0])
    assert _int8_by_part(rebuilt.int8_paths[1]) == {"backbone": {True}, "protonet": {True}, "flow_net": {True},
                                                    "fpn": {False}, "head": {False}, "spa": {False}}


def test_video_int8_errors(video_setup, tmp_path, int8_predictor):
    tv, weights, _, _ = video_setup
    one = tmp_path / "one"
    one.mkdir()
    cv2.imwrite(str(one / "0.png"), tv.moving_frames(1)[0])
    with pytest.raises(ValueError, match="give at least 2"):
        VideoPredictor(tv.VID_R18, weights, device="cpu", opts=tv.OPTS, precision="int8", calibration=str(one))
    with pytest.raises(ValueError, match="unknown"):
        VideoPredictor(tv.VID_R18, weights, device="cpu", opts=tv.OPTS, precision="int8", int8_parts=["neck"])
    with pytest.raises(prec.PrecisionError, match="VideoPredictor\\(config, weights, precision='int8'\\)"):
        VideoPredictor.from_predictor(int8_predictor)  # an int8 image Predictor holds one graph only


def test_calibration_pairs():
    """A folder is one video (pairs with the last keyframe, interval 5); stills pair with a shift."""
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(7)]
    pairs = q.calibration_pairs(frames, sequence=True)
    assert [(int(k[0, 0, 0]), int(c[0, 0, 0])) for k, c in pairs] == [(0, 1), (0, 2), (0, 3), (0, 4), (5, 6)]
    still = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    [(key, moved)] = q.calibration_pairs([still], sequence=False)
    assert key is still and np.array_equal(moved, np.roll(still, (4, 6), axis=(0, 1)))
