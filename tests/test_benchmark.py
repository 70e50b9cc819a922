"""tools/benchmark.py: the stage-by-stage runner reproduces the model's inference, and a --quick
run produces consistent numbers (positive medians, ratios = time quotients, pinned threads)."""
import json
import os

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
