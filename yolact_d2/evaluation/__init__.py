"""Evaluators: Detectron2's COCOEvaluator, with YOLACT++'s separate box and mask scores."""
from .coco import YolactCOCOEvaluator

__all__ = ["YolactCOCOEvaluator"]
