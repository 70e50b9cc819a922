"""tools/benchmark.py: the stage-by-stage runner reproduces the model's inference, and a --quick
run produces consistent numbers (positive medians, ratios = time quotients, pinned threads).
YolactEdge: its keyframe / non-keyframe stages reproduce inference_video exactly, and a --quick
run's stage times add up, its interval mean is the keyframe/non-keyframe mix, its keyframe finds
what YOLACT finds on the same weights."""
import json
import os

import numpy as np
import pytest
import torch

import inference_fixtures as fx


def load_benchmark():
    from yolact_d2.tools import benchmark

    return benchmark


@pytest.fixture(scope="module")
def bm():
    return load_benchmark()


def test_stages_reproduce_inference(bm, tmp_path):
    """Running the stages one by one gives exactly the detections of Predictor (same model)."""
    from yolact_d2 import Predictor

    weights = fx.write_checkpoint(str(tmp_path / "w.pth"), seed=0)
    pred = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS)
    images = [fx.test_image(100, 150, seed=s) for s in (1, 2)]
    stages = bm.YolactStages(pred.model, [pred._to_input(img) for img in images])
    with torch.inference_mode():
        for name in bm.STAGES:
            getattr(stages, name)()
    assert set(bm.STAGES) == {"preprocess", "backbone", "fpn", "protonet_head", "fast_nms", "mask_assembly"}
    assert "detect" not in vars(pred.model.post_processor)  # the timing stub was removed again
    want = pred(images)
    for got, ref in zip(stages.cache["results"], want):
        assert len(got) == len(ref) > 0
        assert torch.equal(got.pred_classes, ref.pred_classes)
        assert torch.equal(got.scores, ref.scores)
        assert torch.equal(got.pred_masks, ref.pred_masks)
        assert torch.equal(got.pred_boxes.tensor, ref.pred_boxes.tensor)


def test_quick_run_numbers(bm, tmp_path):
    out = str(tmp_path / "bench.json")
    before = torch.get_num_threads()
    try:
        assert bm.main(["--quick", "--threads", "1", "--json", out]) == 0
        assert torch.get_num_threads() == 1  # pinned as stated
    finally:
        torch.set_num_threads(before)
    res = json.load(open(out))
    assert res["threads"] == 1 and res["device"] == "cpu" and res["image_size"] == [96, 128]
    assert res["opts"] == ["model.input_size=192"]
    (run,) = res["runs"]
    assert run["batch"] == 1 and run["dtype"] == "fp32"
    contenders = run["contenders"]
    assert set(contenders) == {"yolact_d2", "yolact_d2 (no optimize)", "Mask R-CNN R50-FPN"}
    ours = contenders["yolact_d2"]
    for name, r in contenders.items():
        assert r["ms"] > 0 and r["cpu_ms"] > 0 and len(r["samples_ms"]) == 1
        assert r["ms"] == pytest.approx(r["samples_ms"][0], abs=0.01)  # median of one sample
        assert r["yolact_d2_over_this"] == pytest.approx(ours["ms"] / r["ms"], rel=1e-3)
        assert r["images_per_s"] == pytest.approx(1000.0 / r["ms"], rel=1e-3)
    assert ours["yolact_d2_over_this"] == 1.0
    # optimised and plain model find the same number of detections; the stage runner too
    assert ours["detections_first_image"] == contenders["yolact_d2 (no optimize)"]["detections_first_image"]
    assert run["stage_detections_first_image"] == ours["detections_first_image"]
    stages = run["stages_ms"]
    assert all(stages[s] > 0 for s in bm.STAGES)
    assert stages["sum"] == pytest.approx(sum(stages[s] for s in bm.STAGES), abs=0.05)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("YOLACT_OFFICIAL_ROOT"), reason="set YOLACT_OFFICIAL_ROOT to a dbolya/yolact checkout")
def test_official_contender(bm, tmp_path):
    out = str(tmp_path / "bench.json")
    bm.main(["--batch-sizes", "1", "--warmup", "0", "--iters", "1", "--no-plain", "--no-maskrcnn", "--no-stages",
             "--official-root", os.environ["YOLACT_OFFICIAL_ROOT"], "--json", out])
    run = json.load(open(out))["runs"][0]
    assert run["contenders"]["official YOLACT"]["ms"] > 0


VID_R18 = os.path.join(fx.REPO, "configs", "yolact_edge", "yolact_edge_vid_R_18_FPN_550.py")


@pytest.fixture(scope="module")
def edge_weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("edge") / "edge_vid_r18.pth")
    return fx.write_checkpoint(path, seed=0, config=VID_R18, opts=["model.input_size=128"])


def test_edge_stages_reproduce_inference_video(edge_weights):
    """YolactEdge stage by stage gives exactly the model's inference_video: a keyframe, then the
    shifted image warped from that keyframe's state."""
    from yolact_d2 import VideoPredictor
    from yolact_d2.tools import benchmark_edge as be

    vp = VideoPredictor(VID_R18, edge_weights, device="cpu", opts=["model.input_size=128"])
    image = fx.test_image(96, 128, seed=4)
    moved = be.shifted(image)
    assert np.array_equal(moved[4:, 6:], image[:-4, :-6])  # (dy, dx) = (4, 6) camera motion
    key_in, moved_in = [vp._to_input(image)], [vp._to_input(moved)]
    stages = be.EdgeStages(vp.model, key_in, moved_in)
    with torch.inference_mode():
        for s in be.KEYFRAME_STAGES:
            getattr(stages, "key_" + s)()
        for s in be.WARPED_STAGES:
            getattr(stages, "warped_" + s)()
        want_key, state = vp.model.inference_video(key_in, None, keyframe=True)
        want_warped, _ = vp.model.inference_video(moved_in, state, keyframe=False)
    for got, want in ((stages.cache["key_results"], want_key), (stages.cache["results"], want_warped)):
        got, want = got[0]["instances"], want[0]["instances"]
        assert len(got) == len(want) > 0
        for field in ("pred_classes", "scores", "pred_masks"):
            assert torch.equal(getattr(got, field), getattr(want, field))
        assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)


@pytest.mark.slow
def test_edge_quick_run_numbers(bm, edge_weights, tmp_path):
    out = str(tmp_path / "edge.json")
    before = torch.get_num_threads()
    try:
        assert bm.main(["--config", VID_R18, "--weights", edge_weights, "--quick", "--threads", "1",
                        "--json", out]) == 0
    finally:
        torch.set_num_threads(before)
    (run,) = json.load(open(out))["runs"]
    assert run["yolact_edge"] and run["batch"] == 1 and run["keyframe_interval"] == 5
    c = run["contenders"]
    assert set(c) == {"YOLACT (same backbone)", "YolactEdge keyframe", "YolactEdge non-keyframe",
                      "YolactEdge mean at interval 5"}
    key, warped, mean = c["YolactEdge keyframe"], c["YolactEdge non-keyframe"], c["YolactEdge mean at interval 5"]
    for k in ("ms", "min_ms", "cpu_ms"):
        assert mean[k] == pytest.approx((key[k] + 4 * warped[k]) / 5, abs=0.01)
        for r in c.values():
            assert r[k] > 0
            assert r["over_yolact" + {"ms": "", "min_ms": "_min", "cpu_ms": "_cpu"}[k]] == pytest.approx(
                r[k] / c["YOLACT (same backbone)"][k], rel=1e-3)
    # the keyframe is YOLACT on the same weights: same detections; the stage runner agrees with both kinds
    assert key["detections_first_image"] == c["YOLACT (same backbone)"]["detections_first_image"] > 0
    assert run["stage_detections"] == {"keyframe": key["detections_first_image"],
                                       "non-keyframe": warped["detections_first_image"]}
    for kind, names in (("keyframe", ["preprocess", "backbone", "fpn_phase1", "rest"]),
                        ("non-keyframe", ["preprocess", "partial_backbone", "flow", "warp", "rest"])):
        stages = run["stages_ms"][kind]
        assert list(stages) == names + ["sum"] and all(stages[s] > 0 for s in names)
        assert stages["sum"] == pytest.approx(sum(stages[s] for s in names), abs=0.05)


def test_schedule_study_helpers():
    """The panning sequence moves by the stated speeds; agreement = best same-class mask IoU."""
    from detectron2.structures import Instances

    from yolact_d2.tools import benchmark_edge as be

    frames = be.panning_frames(40, 60, 10, seed=1)  # 2 frames per speed segment: 0, 2, 10, 0, 5 px
    steps = [0, 0, 2, 2, 10, 10, 0, 0, 5]  # frame i -> i+1
    for i, dx in enumerate(steps):
        assert np.array_equal(frames[i + 1][:, : 60 - dx], frames[i][:, dx:]), i

    def inst(masks, classes, scores):
        out = Instances((4, 4))
        out.pred_masks = torch.tensor(masks, dtype=torch.bool)
        out.pred_classes = torch.tensor(classes)
        out.scores = torch.tensor(scores)
        return out

    a = [[[1, 1, 0, 0]] * 4, [[0, 0, 0, 0]] * 4]  # a 4x2 block; an empty mask
    half = [[[1, 0, 0, 0]] * 4]
    want = inst(a, [0, 1], [0.9, 0.8])
    assert be.agreement(want, want) == 1.0
    assert be.agreement(inst(half + [a[1]], [0, 1], [0.9, 0.8]), want) == pytest.approx((0.5 + 1.0) / 2)
    assert be.agreement(inst(a, [2, 2], [0.9, 0.8]), want) == 0.0  # other classes do not count
    assert be.agreement(inst(a, [0, 1], [0.1, 0.1]), want) == 0.0  # below the score floor: missed
    assert be.agreement(inst(a, [0, 1], [0.1, 0.1]), inst(a, [0, 1], [0.2, 0.2])) == 1.0  # nothing to find
