"""ONNX export of a whole YOLACT (resize, network, Fast NMS, mask assembly) and an onnxruntime runner.

    from yolact_d2.deploy.onnx import export_onnx, OnnxPredictor
    export_onnx(predictor.model, "yolact.onnx")                 # opset 18, dynamic batch/height/width
    instances = OnnxPredictor("yolact.onnx")(cv2.imread("x.jpg"))

Graph input "images": (B, 3, H, W) uint8 in the model's input_format (BGR for our configs); all
images of one call share H, W. Outputs: see `YolactExportWrapper` (padded to max_detections,
`num_detections` real rows per image). Uses torch's dynamo exporter (needs onnxscript); the custom
Fast NMS / crop kernels are replaced by their pure-PyTorch paths while exporting
(`torch.onnx.is_in_onnx_export()`; the wrapper calls those paths directly anyway).
Opset 18 is the exporter's native opset; 17 is accepted but torch's down-conversion currently
fails on this graph (Reduce* axes) and leaves it at 18.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from detectron2.structures import Boxes, Instances

from yolact_d2.deploy.wrapper import YolactExportWrapper, class_nms, output_names

__all__ = ["export_onnx", "export_wrapper", "OnnxPredictor", "outputs_to_instances"]

logger = logging.getLogger(__name__)


def _sample_images(batch: int, height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g)


def _class_nms_onnx_table():
    """custom_translation_table entry: our class_nms op as one ONNX NonMaxSuppression (greedy, per
    class, score > threshold, IoU > threshold suppresses: torchvision's nms rule)."""
    from onnxscript import opset18 as op

    def translate(boxes, scores, iou_threshold: float, score_threshold: float):
        big = op.Constant(value_int=2**62)  # no per-class cap: max_detections is applied after
        iou = op.Constant(value_float=iou_threshold)
        thr = op.Constant(value_float=score_threshold)
        return op.NonMaxSuppression(boxes, scores, big, iou, thr)

    return {class_nms._opoverload: translate}


def export_settings(model: nn.Module, opset: int, sample_size: Tuple[int, int], dynamic_size: bool):
    """(opset, dynamic_size) the model can be exported with; an opset that is too old is an error."""
    if opset < 17:
        raise ValueError(f"export_onnx: opset must be >= 17, got {opset}.")
    if getattr(model, "mask_rescoring", None) is not None and opset < 19:
        logger.info("export_onnx: YOLACT++ deformable convs need ONNX DeformConv (opset 19); using 19.")
        opset = 19
    if model.resize_mode != "squash" and dynamic_size:
        logger.warning(
            "export_onnx: resize_mode=%r computes its resized size when the graph is recorded: the "
            "graph takes %s images only (export with sample_size = your image size).",
            model.resize_mode, tuple(sample_size),
        )
        dynamic_size = False
    return opset, dynamic_size


def image_dims(dynamic_batch: bool, dynamic_size: bool) -> Dict[int, object]:
    """torch.export dims of the "images" input (B, 3, H, W)."""
    dim = torch.export.Dim
    shapes = {0: dim("batch", min=1, max=1024)} if dynamic_batch else {}
    if dynamic_size:
        shapes.update({2: dim("height", min=32, max=8192), 3: dim("width", min=32, max=8192)})
    return shapes


def export_onnx(
    model: nn.Module,
    path: str,
    opset: int = 18,
    sample_size: Tuple[int, int] = (480, 640),
    sample_batch: int = 2,
    dynamic_size: bool = True,
) -> str:
    """Export `model` (a Yolact in eval mode; fold its batch norms first for a leaner graph) to `path`.

    The batch dimension is always dynamic; height and width too when `dynamic_size` (else the graph
    only accepts `sample_size`). Returns `path`.
    """
    opset, dynamic_size = export_settings(model, opset, sample_size, dynamic_size)
    model = model.eval()
    wrapper = YolactExportWrapper(model).eval()
    sample = _sample_images(sample_batch, *sample_size).to(model.device)
    shapes = image_dims(dynamic_batch=True, dynamic_size=dynamic_size)
    return export_wrapper(wrapper, {"images": sample}, path, output_names(model), {"images": shapes}, opset)


def export_wrapper(wrapper: nn.Module, inputs: Dict[str, torch.Tensor], path: str, outputs: Sequence[str],
                   dynamic_shapes: Dict, opset: int) -> str:
    """The dynamo export both the image graph and YolactEdge's two video graphs go through:
    `inputs` (name -> sample tensor, in forward's order), checked with onnx.checker."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            tuple(inputs.values()),
            path,
            input_names=list(inputs),
            output_names=list(outputs),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            custom_translation_table=_class_nms_onnx_table(),
        )
    del program
    import onnx

    onnx.checker.check_model(path)
    logger.info("exported %s (opset %d)", path, opset)
    return path


def outputs_to_instances(outputs: Sequence[np.ndarray], image_size: Tuple[int, int]) -> List[Instances]:
    """The exported graph's outputs (numpy or tensors) -> one Instances per image (real rows only);
    a sixth output (YOLACT++) becomes `mask_scores`."""
    boxes, scores, classes, masks, counts, *rest = (torch.as_tensor(np.asarray(o)) for o in outputs)
    result = []
    for i in range(boxes.shape[0]):
        n = int(counts[i])
        inst = Instances(tuple(image_size))
        inst.pred_boxes = Boxes(boxes[i, :n].float())
        inst.scores = scores[i, :n].float()
        inst.pred_classes = classes[i, :n].long()
        inst.pred_masks = masks[i, :n].bool()
        if rest:
            inst.mask_scores = rest[0][i, :n].float()
        result.append(inst)
    return result


class OnnxPredictor:
    """Runs an exported YOLACT with onnxruntime: BGR uint8 (H, W, 3) image or list of same-size
    images -> Instances (or a list), like `yolact_d2.Predictor`.

    runtime: "cpu" (default), "cuda", or "tensorrt" (ONNX Runtime's TensorRT provider; fp16=True lets
    it use half precision; engine_cache: a folder for the built TensorRT engines). A runtime this
    onnxruntime cannot give, or one that falls back to another at load, is an error naming what is
    missing (yolact_d2.deploy.runtimes). providers: an explicit onnxruntime provider list instead."""

    def __init__(self, path: str, providers: Optional[Sequence] = None, input_format: str = "BGR", *,
                 runtime: str = "cpu", fp16: bool = False, engine_cache: Optional[str] = None):
        from yolact_d2.deploy.runtimes import onnx_session  # checks that `path` exists

        self.session = onnx_session(path, runtime, fp16, engine_cache=engine_cache, providers=providers)
        self.input_format = input_format

    def __call__(self, images: Union[np.ndarray, Sequence[np.ndarray]]):
        from yolact_d2.predictor import _check_image

        single = isinstance(images, np.ndarray)
        batch = [images] if single else list(images)
        batch = [_check_image(img, None if single else i) for i, img in enumerate(batch)]
        sizes = {img.shape[:2] for img in batch}
        if len(sizes) != 1:
            raise ValueError(f"OnnxPredictor: one call takes images of one size, got sizes {sorted(sizes)}.")
        if self.input_format == "RGB":
            batch = [img[:, :, ::-1] for img in batch]
        array = np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2))  # (B, 3, H, W) uint8
        outputs = self.session.run([o.name for o in self.session.get_outputs()], {"images": array})
        result = outputs_to_instances(outputs, batch[0].shape[:2])
        return result[0] if single else result
