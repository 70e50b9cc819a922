"""The YOLACT network alone as an ONNX graph, run by ONNX Runtime between our own pre- and
post-processing: what the int8 path runs (yolact_d2.deploy.quantize).

    export_network_onnx(model, "net.onnx")          # normalised (B, 3, S, S) -> loc, conf, coef, proto
    runner = OnnxNetworkYolact("net.int8.onnx", model)
    outputs = runner([{"image": chw_uint8, "height": h, "width": w}])   # [{"instances": Instances}]

Why not the whole-model graph of deploy/onnx.py: its in-graph Fast NMS works on padded (C, K, K)
IoU matrices and its mask assembly upsamples all max_detections rows to full size; in ONNX
Runtime those cost ~90 ms of an R50-550 int8 run (measured, 2 threads), against ~25 ms for the
eager post-processor then (our C++ Fast NMS, masks of the real detections only; ~16 ms since the
mask paste is compiled too). So the int8 graph
ends at the network's outputs, and `Yolact.preprocess_image` / `Yolact.inference_from_predictions`
(the one post-processing, float32) run around it in PyTorch, exactly as in the eager model.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["NETWORK_OUTPUTS", "NetworkGraph", "export_network_onnx", "network_feed", "network_input_size", "OnnxNetworkYolact"]

NETWORK_OUTPUTS = ("loc", "conf", "coef", "proto")


class NetworkGraph(nn.Module):
    """normalised images (B, 3, H, W) float -> loc (B, P, 4), conf (B, P, C+1) logits, coef (B, P, K),
    proto (B, Hp, Wp, K): the tensors `Yolact._predict_from_features` makes (priors excepted)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # weight names stay "model.backbone...", which deploy.quantize's parts read

    def forward(self, images: torch.Tensor):
        return self.predictions(self.model.backbone(images))

    def predictions(self, feats: Dict[str, torch.Tensor]):
        """FPN features -> (loc, conf, coef, proto); YolactEdge's video network graphs feed it their
        keyframe or warped features (deploy/video_export.py)."""
        m = self.model
        proto = m.protonet(feats[m.proto_feature]).permute(0, 2, 3, 1)
        preds = m.head([feats[f] for f in m.head_features])
        return preds["loc"], preds["conf"], preds["coef"], proto


def network_input_size(model: nn.Module):
    """The fixed (H, W) the network sees: the squash size or the shortest_edge canvas."""
    if model.resize_mode == "squash":
        return (model.input_size, model.input_size)
    return tuple(model._canvas_size())  # shortest_edge: every image is padded onto this canvas


def export_network_onnx(model: nn.Module, path: str, opset: int = 18) -> str:
    """Export `model`'s network (a Yolact in eval mode, batch norms folded) at its fixed network
    input size, dynamic batch. Returns `path`."""
    import onnx

    if getattr(model, "mask_rescoring", None) is not None and opset < 19:
        opset = 19  # YOLACT++ deformable convs: ONNX DeformConv
    size = network_input_size(model)
    sample = torch.zeros(1, 3, *size, device=model.device)
    with torch.no_grad():
        torch.onnx.export(
            NetworkGraph(model.eval()).eval(), (sample,), path, input_names=["images"],
            output_names=list(NETWORK_OUTPUTS), opset_version=opset, dynamo=True,
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=1024)}}, external_data=False,
        )
    onnx.checker.check_model(path)
    return path


def network_feed(model: nn.Module, image: np.ndarray) -> Dict[str, np.ndarray]:
    """A BGR uint8 (H, W, 3) image as the network graph's input: the model's own preprocess_image."""
    if getattr(model, "input_format", "BGR") == "RGB":
        image = image[:, :, ::-1]
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    with torch.no_grad():
        images = model.preprocess_image([{"image": chw}], resize=True)
    return {"images": images.tensor.float().cpu().numpy()}


class OnnxNetworkYolact:
    """A Detectron2-style model (list of {"image", "height", "width"} -> [{"instances"}]): `model`'s
    preprocess_image, the network graph at `path` in ONNX Runtime, `model`'s post-processing.

    threads: ONNX Runtime's intra-op threads (default torch.get_num_threads(), so a pinned torch
    thread count, e.g. tools/benchmark.py --threads, pins ONNX Runtime too).
    extra_outputs: outputs after the network's four (YolactEdge's video state / flow).
    extra_inputs: inputs after "images" (YolactEdge's non-keyframe graph takes the state)."""

    def __init__(self, path: str, model: nn.Module, threads: int = 0, extra_outputs: Sequence[str] = (),
                 extra_inputs: Sequence[str] = ()):
        import os

        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"OnnxNetworkYolact: '{path}' does not exist.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        # ONNX Runtime's idle threads busy-wait after a run by default, taking the cores from the
        # PyTorch post-processing that follows. Off, R50-550 int8 end to end on 2 cores (12 rounds,
        # busy machine): median 652 vs 752 ms, best 194 vs 200 (force_spinning_stop: 736 / 195).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in self.session.get_outputs()]
        self.outputs = list(NETWORK_OUTPUTS) + list(extra_outputs)
        if names != self.outputs:
            raise ValueError(
                f"OnnxNetworkYolact: '{path}' has outputs {names}, not the network graph's {self.outputs}; "
                "a whole-model export (tools/export_model.py) runs with yolact_d2.deploy.onnx.OnnxPredictor."
            )
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ["images"] + list(extra_inputs):
            raise ValueError(f"OnnxNetworkYolact: '{path}' takes {inputs}, not {['images'] + list(extra_inputs)}.")
        self.model = model
        self.input_format = getattr(model, "input_format", "BGR")
        self.training = False
        size = network_input_size(model)
        with torch.no_grad():  # priors depend only on the fixed network input size: once
            probe = torch.zeros(1, 3, *size, device=model.device)
            feats = model.backbone(probe)
            levels = [tuple(feats[f].shape[-2:]) for f in model.head_features]
            self.priors = model.prior_generator(levels, size, model.device)  # (P, 4)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("OnnxNetworkYolact runs inference only.")
        return self

    def network(self, images: torch.Tensor, **extra: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, 3, H, W) normalised (+ the extra inputs by name) -> {loc, conf, coef, proto, + the
        extra outputs} float32 tensors (ONNX Runtime)."""
        feed = {"images": np.ascontiguousarray(images.float().cpu().numpy())}
        feed.update({name: np.ascontiguousarray(value.cpu().numpy()) for name, value in extra.items()})
        outs = self.session.run(self.outputs, feed)
        return {name: torch.from_numpy(out) for name, out in zip(self.outputs, outs)}

    def __call__(self, inputs: Sequence[Dict]) -> List[Dict]:
        with torch.no_grad():
            images = self.model.preprocess_image(list(inputs), resize=True)
            predictions = self.network(images.tensor)
            return self.model.inference_from_predictions(predictions, self.priors, images, list(inputs))
