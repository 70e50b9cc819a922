"""YolactEdge video models as two ONNX graphs (keyframe, non-keyframe) and their onnxruntime runner.

    from yolact_d2.deploy.video_export import export_video_onnx, OnnxVideoModel
    export_video_onnx(model, "edge.keyframe.onnx", "edge.warped.onnx")
    runner = OnnxVideoModel("edge.keyframe.onnx", "edge.warped.onnx")
    instances, state = runner.keyframe(frame)        # frame: (H, W, 3) uint8 in the model's format
    instances, _ = runner.warped(next_frame, state)

Keyframe graph: "images" (1, 3, H, W) uint8 -> the image graph's detections (`YolactExportWrapper`:
boxes, scores, classes, masks, num_detections) + the state a later frame warps from:
state_p4, state_p5 (the keyframe's phase-1 P4/P5) and state_flow_feature (its C3 lateral reduced by
the flow net's pre-conv). P3 and the keyframe's own C3 lateral, also kept by `KeyframeState`, are not
graph outputs: a warped frame rebuilds P3 from its warped P4 and its own lateral, and reads the
keyframe's lateral only through its reduction, so nothing downstream would read them.
Non-keyframe graph: "images" + those three state tensors -> the same detections + flow_current (this
frame's reduced lateral) and flow (the 1/2-scale flow, warps P4): what the adaptive keyframe rule
measures (`keyframe_schedule.warp_measures`), returned instead of recomputed.

The int8 runtime (VideoPredictor(precision="int8")) uses the same two graphs cut at the network
(`export_video_network_onnx`: normalised (1, 3, S, S) -> loc, conf, coef, proto + the state /
flow outputs) with the model's own preprocess_image and inference_from_predictions around them
(`OnnxVideoNetwork`), as deploy.network_graph does for images.

Both graphs run YolactEdge's own stage methods (keyframe_features; partial_c3, flow net,
transfer_features, forward_phase2) and one post-processing (`YolactExportWrapper.detections`), so
they are the PyTorch model's inference_video up to float rounding. Batch 1 (a video stream); height
and width dynamic as the image export's. The state's shapes follow the network input size.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from yolact_d2.deploy.onnx import export_settings, export_wrapper, image_dims, outputs_to_instances, _sample_images
from yolact_d2.deploy.network_graph import NETWORK_OUTPUTS, NetworkGraph, OnnxNetworkYolact, network_input_size
from yolact_d2.deploy.wrapper import YolactExportWrapper, output_names
from yolact_d2.modeling.feature_transfer import KeyframeState

__all__ = [
    "STATE_NAMES",
    "FLOW_NAMES",
    "KeyframeExportWrapper",
    "WarpedExportWrapper",
    "export_video_onnx",
    "OnnxVideoModel",
    "shifted",
    "warped_features",
    "KeyframeNetworkGraph",
    "WarpedNetworkGraph",
    "export_video_network_onnx",
    "OnnxVideoNetwork",
]

STATE_NAMES = ("state_p4", "state_p5", "state_flow_feature")
FLOW_NAMES = ("flow_current", "flow")
INPUT_SIZE_KEY = "yolact_d2.input_size"  # metadata of both graphs: the network input "H,W" (motion units)
CAMERA_SHIFT = (4, 6)  # (dy, dx) pixels: a panning camera's next frame (calibration, benchmarks)


def shifted(image: np.ndarray, shift: Tuple[int, int] = CAMERA_SHIFT) -> np.ndarray:
    """`image` moved by (dy, dx) pixels, wrapping round: a still image's next frame under camera motion."""
    return np.ascontiguousarray(np.roll(image, shift, axis=(0, 1)))


def _check_video_model(model: nn.Module, what: str) -> None:
    if not getattr(model, "is_video_model", False):
        raise ValueError(
            f"{what}: {type(model).__name__} is not a YolactEdge video model (no flow net); export image "
            "models with export_onnx, video models from configs/yolact_edge/yolact_edge_vid_*.py."
        )


class KeyframeExportWrapper(YolactExportWrapper):
    """images (1, 3, H, W) uint8 -> detections (as YolactExportWrapper) + state_p4, state_p5,
    state_flow_feature."""

    def __init__(self, model: nn.Module):
        _check_video_model(model, "KeyframeExportWrapper")
        super().__init__(model)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        height, width = images.shape[-2], images.shape[-1]
        resized = self._resized_size(height, width)
        feats, state = self.model.keyframe_features(self._normalize(images, resized))
        return (*self.detections(feats, height, width, resized), *state.features[1:], state.flow_feature)


class WarpedExportWrapper(YolactExportWrapper):
    """images (1, 3, H, W) uint8 + a keyframe's state_p4, state_p5, state_flow_feature -> detections
    + flow_current, flow (YolactEdge.warped_features, then the image graph's post-processing)."""

    def __init__(self, model: nn.Module):
        _check_video_model(model, "WarpedExportWrapper")
        super().__init__(model)

    def forward(self, images, state_p4, state_p5, state_flow_feature) -> Tuple[torch.Tensor, ...]:
        height, width = images.shape[-2], images.shape[-1]
        resized = self._resized_size(height, width)
        feats, current, flow = warped_features(self.model, self._normalize(images, resized), state_p4, state_p5,
                                               state_flow_feature)
        return (*self.detections(feats, height, width, resized), current, flow)


def warped_features(model: nn.Module, x: torch.Tensor, state_p4, state_p5, state_flow_feature):
    """YolactEdge.warped_features from the three state tensors, for the graphs: (FPN features, this
    frame's reduced lateral, the 1/2-scale flow)."""
    # Only what a warped frame reads (see the module docstring): P3 and the lateral are not kept.
    size = tuple(x.shape[-2:])
    state = KeyframeState(features=[None, state_p4, state_p5], lateral=None, input_size=size, image_size=size,
                          flow_feature=state_flow_feature)
    lateral = model.backbone.lateral_convs[0](model.partial_c3(x))
    current = model.flow_net.reduce(lateral)  # predict_flow's two steps, its reduced lateral kept as an output
    flows = model.flow_net(current, state_flow_feature)  # [1/4 scale (P5), 1/2 scale (P4)]
    feats = model.backbone.forward_phase2(model.transfer_features(lateral, flows, state))
    return feats, current, flows[-1][0]


def export_video_onnx(
    model: nn.Module,
    keyframe_path: str,
    warped_path: str,
    opset: int = 18,
    sample_size: Tuple[int, int] = (480, 640),
    dynamic_size: bool = True,
) -> Tuple[str, str]:
    """Export a YolactEdge video model (eval; fold its batch norms first for leaner graphs) as its
    keyframe and non-keyframe graphs. Returns (keyframe_path, warped_path)."""
    _check_video_model(model, "export_video_onnx")
    opset, dynamic_size = export_settings(model, opset, sample_size, dynamic_size)
    model = model.eval()
    key, warped = KeyframeExportWrapper(model).eval(), WarpedExportWrapper(model).eval()
    sample = _sample_images(1, *sample_size).to(model.device)
    dims = image_dims(dynamic_batch=False, dynamic_size=dynamic_size) or None
    detections = output_names(model)
    export_wrapper(key, {"images": sample}, keyframe_path, detections + STATE_NAMES, {"images": dims}, opset)
    with torch.no_grad():
        state = key(sample)[len(detections):]  # sample state: its shapes are what the graph records
    inputs = {"images": torch.roll(sample, CAMERA_SHIFT, dims=(2, 3))}
    inputs.update(zip(STATE_NAMES, state))
    shapes = {"images": dims, **{name: None for name in STATE_NAMES}}
    export_wrapper(warped, inputs, warped_path, detections + FLOW_NAMES, shapes, opset)
    for path in (keyframe_path, warped_path):
        _set_metadata(path, {INPUT_SIZE_KEY: ",".join(map(str, key.net_size))})
    return keyframe_path, warped_path


def _set_metadata(path: str, values: Dict[str, str]) -> None:
    import onnx

    proto = onnx.load(path)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)


class OnnxVideoModel:
    """Both graphs in onnxruntime: frames (H, W, 3) uint8 in the model's input_format -> Instances,
    the keyframe's state as a `KeyframeState` (torch tensors; features = [None, P4, P5])."""

    def __init__(self, keyframe_path: str, warped_path: str, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import os

        import onnxruntime as ort

        for path in (keyframe_path, warped_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"OnnxVideoModel: '{path}' does not exist; make it with export_video_onnx.")
        self.sessions = {kind: ort.InferenceSession(path, providers=list(providers))
                         for kind, path in (("keyframe", keyframe_path), ("warped", warped_path))}
        size = self.sessions["keyframe"].get_modelmeta().custom_metadata_map.get(INPUT_SIZE_KEY)
        if size is None:
            raise ValueError(
                f"OnnxVideoModel: '{keyframe_path}' has no {INPUT_SIZE_KEY} metadata; export it with "
                "yolact_d2.deploy.video_export.export_video_onnx."
            )
        self.input_size = tuple(int(v) for v in size.split(","))
        self._outputs = {kind: [o.name for o in s.get_outputs()] for kind, s in self.sessions.items()}

    @staticmethod
    def _images(frame: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(frame.transpose(2, 0, 1))[None]  # (1, 3, H, W) uint8

    def _split(self, kind: str, outputs: List[np.ndarray], size) -> Tuple[object, List[torch.Tensor]]:
        n = len(self._outputs[kind]) - (len(STATE_NAMES) if kind == "keyframe" else len(FLOW_NAMES))
        return outputs_to_instances(outputs[:n], size)[0], [torch.from_numpy(o) for o in outputs[n:]]

    def keyframe(self, frame: np.ndarray):
        """(Instances, KeyframeState) of a full pass."""
        outputs = self.sessions["keyframe"].run(self._outputs["keyframe"], {"images": self._images(frame)})
        instances, (p4, p5, flow_feature) = self._split("keyframe", outputs, frame.shape[:2])
        state = KeyframeState(features=[None, p4, p5], lateral=None, input_size=self.input_size,
                              image_size=tuple(frame.shape[:2]), flow_feature=flow_feature)
        return instances, state

    def warped(self, frame: np.ndarray, state: KeyframeState):
        """(Instances, (this frame's reduced lateral, the keyframe's, the 1/2-scale flow)) of a pass
        warped from `state` (what warp_measures takes)."""
        feeds = {"images": self._images(frame)}
        for name, value in zip(STATE_NAMES, (state.features[1], state.features[2], state.flow_feature)):
            feeds[name] = np.ascontiguousarray(value.numpy())
        outputs = self.sessions["warped"].run(self._outputs["warped"], feeds)
        instances, (current, flow) = self._split("warped", outputs, frame.shape[:2])
        return instances, (current, state.flow_feature, flow)

    def state_feeds(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        """The keyframe graph's state outputs for `frame`, named as the warped graph's inputs
        (calibration of the warped graph)."""
        _, state = self.keyframe(frame)
        return {name: value.numpy() for name, value in
                zip(STATE_NAMES, (state.features[1], state.features[2], state.flow_feature))}


# ------------------------------------------------------------------ the network alone (int8 runtime)
# As deploy.network_graph for images: the int8 graphs end at the network's outputs, and the model's
# own preprocess_image / inference_from_predictions run around them (in-graph Fast NMS and mask
# assembly cost ~90 ms of an R50-550 int8 frame in ONNX Runtime, measured for the image graph).
class KeyframeNetworkGraph(NetworkGraph):
    """normalised images (1, 3, S, S) -> loc, conf, coef, proto + state_p4, state_p5, state_flow_feature."""

    def forward(self, images: torch.Tensor):
        feats, state = self.model.keyframe_features(images)
        return (*self.predictions(feats), *state.features[1:], state.flow_feature)


class WarpedNetworkGraph(NetworkGraph):
    """normalised images + the three state tensors -> loc, conf, coef, proto + flow_current, flow."""

    def forward(self, images, state_p4, state_p5, state_flow_feature):
        feats, current, flow = warped_features(self.model, images, state_p4, state_p5, state_flow_feature)
        return (*self.predictions(feats), current, flow)


def export_video_network_onnx(model: nn.Module, keyframe_path: str, warped_path: str, opset: int = 18):
    """Both video network graphs of `model` (eval, batch norms folded) at its fixed network input
    size, batch 1. Returns (keyframe_path, warped_path)."""
    _check_video_model(model, "export_video_network_onnx")
    model = model.eval()
    key, warped = KeyframeNetworkGraph(model).eval(), WarpedNetworkGraph(model).eval()
    sample = torch.zeros(1, 3, *network_input_size(model), device=model.device)
    export_wrapper(key, {"images": sample}, keyframe_path, NETWORK_OUTPUTS + STATE_NAMES, {"images": None}, opset)
    with torch.no_grad():
        state = key(sample)[len(NETWORK_OUTPUTS):]
    inputs = {"images": sample, **dict(zip(STATE_NAMES, state))}
    shapes = {name: None for name in inputs}
    export_wrapper(warped, inputs, warped_path, NETWORK_OUTPUTS + FLOW_NAMES, shapes, opset)
    return keyframe_path, warped_path


class OnnxVideoNetwork:
    """`model`'s pre/post-processing around both video network graphs in ONNX Runtime, with the
    interface VideoPredictor uses: keyframe(inputs) -> (outputs, KeyframeState); warped(inputs,
    state) -> (outputs, (this frame's reduced lateral, the keyframe's, the 1/2-scale flow)).
    inputs: [{"image": (3, H, W) uint8 in the model's format, "height", "width"}]."""

    def __init__(self, keyframe_path: str, warped_path: str, model: nn.Module, threads: int = 0):
        self.model = model
        self.keyframe_net = OnnxNetworkYolact(keyframe_path, model, threads, extra_outputs=STATE_NAMES)
        self.warped_net = OnnxNetworkYolact(warped_path, model, threads, extra_outputs=FLOW_NAMES,
                                            extra_inputs=STATE_NAMES)

    def _run(self, net, inputs, **extra):
        with torch.no_grad():
            images = self.model.preprocess_image(list(inputs), resize=True)
            out = net.network(images.tensor, **extra)
            results = self.model.inference_from_predictions(out, net.priors, images, list(inputs))
        return results, out, tuple(images.tensor.shape[-2:])

    def keyframe(self, inputs: Sequence[Dict]):
        results, out, size = self._run(self.keyframe_net, inputs)
        d = inputs[0]
        state = KeyframeState(features=[None, out["state_p4"], out["state_p5"]], lateral=None, input_size=size,
                              image_size=(int(d["height"]), int(d["width"])), flow_feature=out["state_flow_feature"])
        return results, state

    def warped(self, inputs: Sequence[Dict], state: KeyframeState):
        extra = dict(zip(STATE_NAMES, (state.features[1], state.features[2], state.flow_feature)))
        results, out, _ = self._run(self.warped_net, inputs, **extra)
        return results, (out["flow_current"], state.flow_feature, out["flow"])
