"""Inference-time model rewrites and exporters (ONNX, TorchScript, torch.export).

`optimize` is light and imported by the Predictor; the exporters are imported on use
(`from yolact_d2.export.onnx import export_onnx`) because they pull in onnx/onnxscript.
"""
from .optimize import fold_batch_norm, optimize_for_inference, to_channels_last

__all__ = ["fold_batch_norm", "optimize_for_inference", "to_channels_last"]
