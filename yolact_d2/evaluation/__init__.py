"""Evaluators: Detectron2's COCOEvaluator with YOLACT++'s separate box and mask scores; video AP over
YolactEdge's keyframe phases; the flow net's end-point error."""
from .coco import YolactCOCOEvaluator
from .flow import FlowEPEEvaluator, inference_on_flow_dataset
from .video import VideoEvaluator, feature_transfer_similarity, inference_on_video_dataset, keyframe_schedule

__all__ = [
    "YolactCOCOEvaluator",
    "VideoEvaluator",
    "inference_on_video_dataset",
    "keyframe_schedule",
    "feature_transfer_similarity",
    "FlowEPEEvaluator",
    "inference_on_flow_dataset",
]
