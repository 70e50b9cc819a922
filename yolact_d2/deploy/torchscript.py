"""TorchScript (trace) and torch.export (.pt2) versions of the whole-model export graph.

Both record `YolactExportWrapper` (resize, network, Fast NMS, mask assembly), so the saved
program takes (B, 3, H, W) uint8 images and returns the padded outputs described there.

Limits:
* TorchScript: `torch.jit.trace` (scripting the Detectron2 backbone is not supported). The trace
  keeps batch and image size symbolic (sizes are read with aten::size), but control flow that
  depends on values is frozen: fine here, as the wrapper has none. torch.jit is deprecated in
  torch 2.x; prefer torch.export or ONNX for new deployments.
* torch.export: dynamic batch, height and width ("shortest_edge" models: dynamic batch, the
  recorded image size); load with torch.export.load(path).module().
* Standard-NMS models call the `yolact_d2_export::class_nms` op: `import yolact_d2.deploy.wrapper`
  before loading them.
"""
import os
from typing import Tuple

import torch
from torch import nn

from yolact_d2.deploy.onnx import _sample_images
from yolact_d2.deploy.wrapper import YolactExportWrapper

__all__ = ["export_torchscript", "export_program"]


def export_torchscript(model: nn.Module, path: str, sample_size: Tuple[int, int] = (480, 640), sample_batch: int = 2) -> str:
    wrapper = YolactExportWrapper(model.eval()).eval()
    sample = _sample_images(sample_batch, *sample_size).to(model.device)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (sample,), check_trace=False)
    traced.save(path)
    return path


def export_program(model: nn.Module, path: str, sample_size: Tuple[int, int] = (480, 640), sample_batch: int = 2) -> str:
    wrapper = YolactExportWrapper(model.eval()).eval()
    sample = _sample_images(sample_batch, *sample_size).to(model.device)
    dim = torch.export.Dim
    shapes = {"images": {0: dim("batch", min=1, max=1024)}}
    if model.resize_mode == "squash":  # shortest_edge computes its resized size from the sample
        shapes["images"].update({2: dim("height", min=32, max=8192), 3: dim("width", min=32, max=8192)})
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(wrapper, (sample,), dynamic_shapes=shapes)
    torch.export.save(program, path)
    return path
