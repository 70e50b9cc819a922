"""Whole-model export (resize + network + Fast NMS + mask assembly): eager wrapper, ONNX with
onnxruntime, TorchScript through tools/export_model.py.

Oracle: the PyTorch model's own inference (`model([{"image", "height", "width"}])`) with the
same seeded weights; "same detections" = classes equal, scores within 1e-4, mask IoU >= 0.99.
"""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import inference_fixtures as fx
from yolact_d2.deploy.optimize import fold_batch_norm
from yolact_d2.deploy.wrapper import YolactExportWrapper


@pytest.fixture(scope="module")
def state():
    return fx.seeded_state_dict(seed=0)


def reference_instances(model, image):
    tensor = torch.as_tensor(image.transpose(2, 0, 1).copy())
    with torch.no_grad():
        return model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])[0]["instances"]


def assert_same(got, want):
    assert len(got) == len(want) > 0
    assert torch.equal(got.pred_classes, want.pred_classes)
    assert (got.scores - want.scores).abs().max() <= 1e-4
    assert (got.pred_boxes.tensor - want.pred_boxes.tensor).abs().max() <= 1
    inter = (got.pred_masks & want.pred_masks).flatten(1).sum(1).float()
    union = (got.pred_masks | want.pred_masks).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    assert iou.min() >= 0.99
    if want.has("mask_scores"):  # YOLACT++ re-scoring
        assert (got.mask_scores - want.mask_scores).abs().max() <= 1e-4


# Every post-processing / resize setting of the model, each against the model's own inference.
SETTINGS = {
    "fast_nms": [],
    "class_agnostic": ["model.post_processor.class_agnostic=True"],
    "standard_nms": ["model.post_processor.standard_nms=True"],
    "shortest_edge": ["model.resize_mode=shortest_edge"],
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_wrapper_matches_inference_with_padding(state, setting):
    from yolact_d2.deploy.onnx import outputs_to_instances

    model = fx.build_model(opts=fx.SMALL_OPTS + ["model.post_processor.score_thresh=0.3"] + SETTINGS[setting])
    model.load_state_dict(state)
    images = [fx.test_image(90, 120, seed=s) for s in (4, 5)]
    wrapper = YolactExportWrapper(model).eval()
    batch = torch.stack([torch.as_tensor(im.transpose(2, 0, 1).copy()) for im in images])
    with torch.no_grad():
        outputs = wrapper(batch)
    boxes, scores, classes, masks, counts = outputs
    assert boxes.shape == (2, 100, 4) and masks.shape == (2, 100, 90, 120) and masks.dtype == torch.bool
    for i, image in enumerate(images):
        want = reference_instances(model, image)
        n = int(counts[i])
        assert n == len(want) > 0
        if setting != "standard_nms":  # (greedy NMS keeps all 100 here)
            assert n < 100  # score_thresh leaves fewer than max_detections: padding rows below
        # padding rows: class -1, score 0, empty mask
        assert torch.all(classes[i, n:] == -1) and torch.all(scores[i, n:] == 0) and not masks[i, n:].any()
        got = outputs_to_instances(outputs, (90, 120))[i]
        assert_same(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["class_agnostic", "standard_nms", "shortest_edge"])
def test_onnx_runtime_post_processing_settings(state, setting, tmp_path):
    """Each non-default setting exported and run in onnxruntime against the PyTorch model."""
    import onnx

    from yolact_d2.deploy.onnx import OnnxPredictor, export_onnx

    opts = fx.SMALL_OPTS + SETTINGS[setting]
    model = fx.build_model(opts=opts)
    model.load_state_dict(state)
    exported = fx.build_model(opts=opts)
    exported.load_state_dict(state)
    fold_batch_norm(exported)
    path = export_onnx(exported, str(tmp_path / "yolact.onnx"), sample_size=(90, 120), sample_batch=2)
    proto = onnx.load(path, load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    assert ("NonMaxSuppression" in ops) == (setting == "standard_nms")
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    # shortest_edge computes its resized size at export: a fixed image size
    assert dims == (["batch", 3, 90, 120] if setting == "shortest_edge" else ["batch", 3, "height", "width"])
    images = [fx.test_image(90, 120, seed=s) for s in (6, 7, 8)]
    for got, image in zip(OnnxPredictor(path)(images), images):
        assert_same(got, reference_instances(model, image))


@pytest.mark.slow
def test_onnx_runtime_yolact_plus(tmp_path):
    """YOLACT++: deformable convs as ONNX DeformConv (opset 19; onnxruntime's CPU kernel) and the
    mask re-scoring in the graph, against the PyTorch model (mask_scores within 1e-4)."""
    import onnx

    from yolact_d2.deploy.onnx import OnnxPredictor, export_onnx

    config = os.path.join(fx.REPO, "configs", "yolact", "yolact_plus_R_50_FPN_550.py")
    opts = ["model.input_size=256"]  # the mask-IoU net needs prototypes >= 63 px
    state = fx.seeded_state_dict(seed=0, config=config, opts=opts)
    model = fx.build_model(opts=opts, config=config)
    model.load_state_dict(state)
    exported = fx.build_model(opts=opts, config=config)
    exported.load_state_dict(state)
    fold_batch_norm(exported)
    path = export_onnx(exported, str(tmp_path / "yolact_plus.onnx"), sample_size=(90, 120), sample_batch=1)
    proto = onnx.load(path, load_external_data=False)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 19
    assert "DeformConv" in {n.op_type for n in proto.graph.node}
    assert [o.name for o in proto.graph.output][-1] == "mask_scores"
    images = [fx.test_image(100, 140, seed=s) for s in (6, 7)]
    for got, image in zip(OnnxPredictor(path)(images), images):
        want = reference_instances(model, image)
        assert want.has("mask_scores") and got.has("mask_scores")
        assert_same(got, want)


@pytest.mark.slow
def test_onnx_runtime_same_detections(state, tmp_path):
    import onnx

    from yolact_d2.deploy.onnx import OnnxPredictor, export_onnx

    model = fx.build_model()
    model.load_state_dict(state)
    exported = fx.build_model()
    exported.load_state_dict(state)
    fold_batch_norm(exported)
    path = export_onnx(exported, str(tmp_path / "yolact.onnx"), sample_size=(120, 160), sample_batch=2)

    proto = onnx.load(path, load_external_data=False)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    ops = {n.op_type for n in proto.graph.node}
    assert {"TopK", "Trilu", "Resize", "MatMul", "Sigmoid"} <= ops  # NMS and mask assembly in the graph

    runner = OnnxPredictor(path)
    # another size and batch than the export sample: dynamic batch / height / width
    images = [fx.test_image(90, 200, seed=6), fx.test_image(90, 200, seed=7), fx.test_image(90, 200, seed=8)]
    results = runner(images)
    assert len(results) == 3
    for got, image in zip(results, images):
        assert_same(got, reference_instances(model, image))
    single = runner(images[0])
    assert torch.equal(single.pred_classes, results[0].pred_classes)
    with pytest.raises(ValueError, match="one size"):
        runner([images[0], fx.test_image(60, 80)])


@pytest.mark.slow
def test_export_tool_torchscript_verify(state, tmp_path):
    weights = str(tmp_path / "w.pth")
    torch.save({"model": state}, weights)
    image_path = str(tmp_path / "img.png")
    cv2.imwrite(image_path, fx.test_image(100, 140, seed=9))
    out = str(tmp_path / "yolact.ts")
    cmd = [sys.executable, os.path.join(fx.REPO, "tools", "export_model.py"), "--config", fx.R50_CONFIG,
           "--weights", weights, "--output", out, "--format", "torchscript", "--sample-size", "120", "160",
           "--verify", image_path, "--opts", *fx.SMALL_OPTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: same detections" in proc.stdout
    assert os.path.getsize(out) > 10_000_000  # the R50 weights are in the file

    loaded = torch.jit.load(out)
    image = fx.test_image(100, 140, seed=9)
    batch = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].repeat(2, 1, 1, 1)
    with torch.no_grad():
        boxes, scores, classes, masks, counts = loaded(batch)
    assert masks.shape[-2:] == (100, 140) and torch.equal(counts[0], counts[1])


def _instances(rows, size=(8, 8)):
    """Instances from (class, score, x0) rows: box and mask a 2x2 square at column x0."""
    from detectron2.structures import Boxes, Instances

    inst = Instances(size)
    inst.pred_classes = torch.tensor([r[0] for r in rows])
    inst.scores = torch.tensor([r[1] for r in rows])
    inst.pred_boxes = Boxes(torch.tensor([[float(r[2]), 0.0, r[2] + 2.0, 2.0] for r in rows]))
    masks = torch.zeros(len(rows), *size, dtype=torch.bool)
    for i, r in enumerate(rows):
        masks[i, :2, r[2]:r[2] + 2] = True
    inst.pred_masks = masks
    return inst


def test_check_all_exports_matcher():
    """The row matcher (yolact_d2.deploy.agreement, which check_all_exports and export_model --verify
    use) on hand-made detections: a near-tied pair of one
    class swapped by the runtime is the same detections; a moved box or a missing row is not; a
    row swapped for another of the cut's score when max_detections is full is a tie at the cut; a
    pixel at the mask threshold is left out of the IoU."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_all_exports", os.path.join(fx.REPO, "scripts",
                                                                                   "check_all_exports.py"))
    ce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ce)
    want = _instances([(1, 0.50005, 0), (1, 0.50000, 3), (2, 0.3, 6)])
    swapped = _instances([(1, 0.50001, 3), (1, 0.50004, 0), (2, 0.3, 6)])  # within 1e-4: order by rounding
    report = ce.compare(swapped, want, max_detections=100)
    assert report["same"] and report["max_box_diff"] == 0 and report["min_mask_iou"] == 1.0
    assert report["max_score_diff"] == pytest.approx(1e-5, abs=1e-7)
    moved = ce.compare(_instances([(1, 0.50005, 1), (1, 0.5, 3), (2, 0.3, 6)]), want, max_detections=100)
    assert not moved["same"] and moved["min_mask_iou"] == pytest.approx(1 / 3)  # 2x2 squares 1 px apart: 2 / 6
    missing = ce.compare(_instances([(1, 0.50005, 0), (1, 0.5, 3)]), want, max_detections=100)
    assert not missing["same"] and not missing["classes_equal"]
    at_cut = ce.compare(_instances([(1, 0.50005, 0), (1, 0.5, 3), (3, 0.30002, 5)]), want, max_detections=3)
    assert at_cut["same"] and at_cut["tie_at_cut"] == 1
    flipped = _instances([(1, 0.50005, 0), (1, 0.5, 3), (2, 0.3, 6)])
    flipped.pred_masks[2, 2, 6] = True  # one pixel more: IoU 4 / 5
    assert not ce.compare(flipped, want, max_detections=100)["same"]
    want.near_threshold = torch.zeros_like(want.pred_masks)
    want.near_threshold[2, 2, 6] = True  # ... at a pixel whose probability is at the threshold: left out
    report = ce.compare(flipped, want, max_detections=100)
    assert report["same"] and report["min_mask_iou"] == 1.0 and report["min_mask_iou_all_pixels"] == pytest.approx(0.8)
    assert set(map(os.path.basename, ce.model_configs())) >= {"yolact_R_50_FPN_550.py", "video_finetune.py"}
    assert not [p for p in ce.model_configs() if os.sep + "common" + os.sep in p]
