"""COCO evaluation with one score per task: boxes with `scores`, masks with `mask_scores`.

Why not COCOEvaluator as is: its `instances_to_coco_json` writes `scores` into both the bbox and
the segm results. YOLACT++ (official rescore_bbox=False) scores boxes with the class score and
masks with class score x predicted mask IoU (Instances.mask_scores), so each task must be ranked
by its own score. Everything else (json writing, category-id mapping, COCOeval, the AP tables) is
COCOEvaluator's own code, run once per task.
"""
from typing import Dict, List

from detectron2.evaluation import COCOEvaluator

__all__ = ["YolactCOCOEvaluator"]

# Which result field holds each task's score; the json results always keep "score" for boxes.
_TASK_SCORE = {"bbox": "score", "segm": "mask_score"}


class YolactCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator that evaluates segm with `Instances.mask_scores` when the model gives them.

    Same arguments as COCOEvaluator. Instances without `mask_scores` (plain YOLACT, any other
    model) are evaluated exactly as by COCOEvaluator. With them, each json result carries
    "score" (the box score) and "mask_score"; per image, the bbox results are ranked by "score"
    and the segm results by "mask_score". `coco_instances_results.json` is written by the first
    task evaluated ("bbox" when both are asked for), so its "score" is the box score.
    """

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            before = len(self._predictions)
            super().process([inp], [out])
            instances = out.get("instances") if isinstance(out, dict) else None
            if instances is None or not instances.has("mask_scores") or len(self._predictions) == before:
                continue
            results = self._predictions[-1].get("instances", [])
            # instances_to_coco_json writes one result per instance, in order.
            for result, score in zip(results, instances.mask_scores.tolist()):
                result["mask_score"] = float(score)

    def _eval_predictions(self, predictions, img_ids=None):
        results = [r for p in predictions for r in p.get("instances", [])]
        if not any("mask_score" in r for r in results):
            return super()._eval_predictions(predictions, img_ids=img_ids)
        if not all("mask_score" in r for r in results):
            raise ValueError(
                "YolactCOCOEvaluator: some detections carry mask_scores and some do not; evaluate "
                "one model's outputs at a time."
            )
        tasks = sorted(self._tasks or self._tasks_from_predictions(results))
        saved_tasks, saved_output_dir = self._tasks, self._output_dir
        try:
            for i, task in enumerate(tasks):
                self._tasks = (task,)
                self._output_dir = saved_output_dir if i == 0 else None  # one results file
                super()._eval_predictions(_scored_for(predictions, task), img_ids=img_ids)
        finally:
            self._tasks, self._output_dir = saved_tasks, saved_output_dir


def _scored_for(predictions: List[Dict], task: str) -> List[Dict]:
    """Copies of the predictions whose "score" is `task`'s score, each image's results sorted by it.

    Shallow copies are enough: COCOEvaluator only rewrites "category_id" of each result dict.
    """
    field = _TASK_SCORE.get(task, "score")
    scored = []
    for pred in predictions:
        results = []
        for r in pred.get("instances", []):
            r = dict(r)
            r["score"] = r[field]
            results.append(r)
        results.sort(key=lambda r: -r["score"])  # stable: ties keep the model's order
        scored.append(dict(pred, instances=results))
    return scored
