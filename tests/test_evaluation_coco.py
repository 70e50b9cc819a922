"""YolactCOCOEvaluator: bbox results scored with `scores`, segm results with `mask_scores`.

Oracles: hand-computed COCO AP of a hand-made case, and Detectron2's own COCOEvaluator run on
Instances whose `scores` are replaced by each task's score.
"""
import json
import math
from pathlib import Path

import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances

from yolact_d2.evaluation import YolactCOCOEvaluator

SIZE = 100
OBJ1, OBJ2 = [10, 10, 40, 40], [60, 60, 90, 90]  # ground truth, class "thing"
EMPTY_A, EMPTY_B = [10, 60, 40, 90], [60, 10, 90, 40]  # no object there
# Detections: (box, mask, class score, mask score). d1: right box, wrong mask; d2: wrong box, right
# mask; d3: both right. Class scores rank d1 > d2 > d3, mask scores d2 > d3 > d1.
DETECTIONS = [(OBJ1, EMPTY_A, 0.9, 0.2), (EMPTY_B, OBJ1, 0.6, 0.8), (OBJ2, OBJ2, 0.5, 0.5)]
# COCO AP (101 recall points; every match has IoU 1, so all IoU thresholds agree):
# boxes by class score: TP, FP, TP -> precision 1 up to recall 0.5, then 2/3: (51 + 50 * 2/3) / 101.
BOX_AP = 100 * (51 + 50 * 2 / 3) / 101
MASK_AP_BY_MASK_SCORE = 100.0  # TP, TP, FP
MASK_AP_BY_CLASS_SCORE = 100 * 2 / 3  # FP, TP, TP: what plain COCOEvaluator reports


def _box_mask(box):
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = True
    return m


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_coco")
    anns = []
    for i, box in enumerate([OBJ1, OBJ2]):
        rle = mask_util.encode(_box_mask(box).numpy().astype("uint8").copy(order="F"))
        rle["counts"] = rle["counts"].decode()
        x1, y1, x2, y2 = box
        anns.append({"id": i + 1, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": rle,
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float((x2 - x1) * (y2 - y1))})
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": SIZE, "width": SIZE}],
            "annotations": anns, "categories": [{"id": 7, "name": "thing"}]}
    (root / "ann.json").write_text(json.dumps(coco))
    name = "yolact_eval_coco_test"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(root / "ann.json"), str(root))
    DatasetCatalog.get(name)  # as the test loader does: sets the category-id mapping (7 -> 0)
    return name


def _instances(score_field="scores"):
    """The model's output. score_field="mask_scores" puts the mask scores into `scores` (oracle)."""
    inst = Instances((SIZE, SIZE))
    inst.pred_boxes = Boxes(torch.tensor([d[0] for d in DETECTIONS], dtype=torch.float32))
    inst.pred_masks = torch.stack([_box_mask(d[1]) for d in DETECTIONS])
    inst.pred_classes = torch.zeros(len(DETECTIONS), dtype=torch.long)
    class_scores = torch.tensor([d[2] for d in DETECTIONS])
    mask_scores = torch.tensor([d[3] for d in DETECTIONS])
    if score_field == "scores":
        inst.scores, inst.mask_scores = class_scores, mask_scores
    else:
        inst.scores = mask_scores
    return inst


def _same(a, b):
    """Metric dicts equal, NaN (no objects of that size) equal to NaN."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def _evaluate(evaluator, instances):
    evaluator.reset()
    evaluator.process([{"image_id": 1, "height": SIZE, "width": SIZE}], [{"instances": instances}])
    return evaluator.evaluate()


def test_bbox_uses_class_scores_and_segm_uses_mask_scores(dataset, tmp_path):
    results = _evaluate(YolactCOCOEvaluator(dataset, tasks=("bbox", "segm"), use_fast_impl=False,
                                            output_dir=str(tmp_path)), _instances())
    assert results["bbox"]["AP"] == pytest.approx(BOX_AP, abs=1e-6)
    assert results["segm"]["AP"] == pytest.approx(MASK_AP_BY_MASK_SCORE, abs=1e-6)

    # Oracle: Detectron2's COCOEvaluator fed each task's score as `scores`.
    plain = COCOEvaluator(dataset, tasks=("bbox", "segm"), use_fast_impl=False, output_dir=str(tmp_path / "d2"))
    by_class = _evaluate(plain, _instances())
    by_mask = _evaluate(plain, _instances("mask_scores"))
    assert _same(results["bbox"], by_class["bbox"]) and _same(results["segm"], by_mask["segm"])
    assert by_class["segm"]["AP"] == pytest.approx(MASK_AP_BY_CLASS_SCORE, abs=1e-6)  # the old behaviour

    # The results file: dataset category ids, "score" = box (class) score, "mask_score" beside it,
    # sorted by the box score.
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert [r["category_id"] for r in written] == [7, 7, 7]
    assert [r["score"] for r in written] == pytest.approx([0.9, 0.6, 0.5])
    assert [r["mask_score"] for r in written] == pytest.approx([0.2, 0.8, 0.5])


def test_segm_results_are_ranked_by_mask_score():
    from yolact_d2.evaluation.coco import _scored_for

    preds = [{"image_id": 1, "instances": [
        {"score": 0.9, "mask_score": 0.2, "category_id": 0},
        {"score": 0.6, "mask_score": 0.8, "category_id": 0},
        {"score": 0.5, "mask_score": 0.5, "category_id": 0},
    ]}]
    segm = _scored_for(preds, "segm")[0]["instances"]
    assert [r["score"] for r in segm] == [0.8, 0.5, 0.2]
    bbox = _scored_for(preds, "bbox")[0]["instances"]
    assert [r["score"] for r in bbox] == [0.9, 0.6, 0.5]
    assert preds[0]["instances"][0]["score"] == 0.9  # the stored predictions are not changed


def test_without_mask_scores_it_is_coco_evaluator(dataset, tmp_path):
    inst = _instances()
    inst.remove("mask_scores")
    ours = _evaluate(YolactCOCOEvaluator(dataset, use_fast_impl=False, output_dir=str(tmp_path / "a")), inst)
    d2 = _evaluate(COCOEvaluator(dataset, use_fast_impl=False, output_dir=str(tmp_path / "b")), inst)
    assert set(ours) == set(d2) == {"bbox", "segm"}
    assert _same(ours["bbox"], d2["bbox"]) and _same(ours["segm"], d2["segm"])
    assert ours["segm"]["AP"] == pytest.approx(MASK_AP_BY_CLASS_SCORE, abs=1e-6)


@pytest.mark.parametrize("name", ["yolact_plus_R_50_FPN_550", "yolact_plus_R_101_FPN_550",
                                  "yolact_plus_regnety_4gf_FPN_550"])
def test_plus_configs_use_it(name):
    cfg = LazyConfig.load(str(Path(__file__).resolve().parents[1] / "configs/yolact" / f"{name}.py"))
    assert cfg.dataloader.evaluator._target_ is YolactCOCOEvaluator
    assert cfg.dataloader.evaluator.use_fast_impl is False
