"""Inference-time rewrites and runtimes: BN folding / conv fusion (`optimize`), numeric precision
(`precision`: fp32 / bf16 / fp16), ONNX / TorchScript / torch.export exporters and the onnxruntime
runner.

`optimize` and `precision` are light and imported by the Predictor; the exporters are imported on
use (`from yolact_d2.deploy.onnx import export_onnx`) because exporting pulls in onnx/onnxscript.
"""
from .optimize import fold_batch_norm, optimize_for_inference, to_channels_last

__all__ = ["fold_batch_norm", "optimize_for_inference", "to_channels_last"]
