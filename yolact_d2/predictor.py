"""`Predictor`: one-line YOLACT inference from a LazyConfig and a checkpoint.

The LazyConfig counterpart of Detectron2's `DefaultPredictor` (which needs a yacs config):

    from yolact_d2 import Predictor
    predictor = Predictor("configs/yolact/yolact_R_50_FPN_550.py", "yolact_R_50_FPN_550.pth")
    instances = predictor(cv2.imread("input.jpg"))   # Instances at the image's own size

Weights may be a yolact_d2 / Detectron2 checkpoint ({"model": state_dict} or a plain state dict,
.pth or .pkl) or an official YOLACT checkpoint (converted on the fly with the strict rules of
`yolact_d2.checkpoint`). Any key or shape that does not fit the config is an error naming it.
"""
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from detectron2.config import LazyConfig, instantiate
from detectron2.data import Metadata, MetadataCatalog
from detectron2.structures import Instances

from yolact_d2.checkpoint.mismatch import StateDictDiff, WeightsMismatchError
from yolact_d2.checkpoint.safe_load import checkpoint_meta, load_checkpoint_file, model_state_from
from yolact_d2.deploy.optimize import optimize_for_inference
from yolact_d2.deploy.precision import PrecisionError, apply_precision, check_precision
from yolact_d2.deploy.realtime import RealtimeEngine, resolve_fast_path

__all__ = ["Predictor", "VideoPredictor", "load_model_config", "load_weights", "WeightsMismatchError"]

logger = logging.getLogger(__name__)

ImageLike = np.ndarray
# Official YOLACT state dicts are recognised by their head key (ours is "head.bbox_pred.*").
_OFFICIAL_MARKER = "prediction_layers.0.bbox_layer.weight"


# ---------------------------------------------------------------------------------- config
def load_model_config(config, opts: Sequence[str] = ()):
    """Path to a LazyConfig file, a loaded LazyConfig (with `.model`) or a model node -> (cfg, model node).

    `opts`: "key=value" overrides relative to the config root, e.g.
    ["model.post_processor.score_thresh=0.3"] (Detectron2's LazyConfig.apply_overrides).
    """
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.isfile(path):  # a model-zoo name ("yolact/yolact_R_50_FPN_550.py"), also when installed
            from yolact_d2.model_zoo import ConfigNotFoundError, get_config_file

            try:
                path = get_config_file(path)
            except ConfigNotFoundError as e:
                raise FileNotFoundError(
                    f"Predictor: config file '{path}' does not exist, and {e} Pass a LazyConfig .py file, "
                    "a model-zoo name such as yolact/yolact_R_50_FPN_550.py, or a loaded config."
                ) from None
        cfg = LazyConfig.load(path)
    else:
        cfg = config
    if opts:
        if isinstance(opts, str):
            opts = [opts]
        bad = [o for o in opts if "=" not in o]
        if bad:
            raise ValueError(f"Predictor: overrides must look like key=value, got {bad}.")
        cfg = LazyConfig.apply_overrides(cfg, list(opts))
    if "model" in cfg and "_target_" not in cfg:
        return cfg, cfg.model
    if "_target_" in cfg:
        return None, cfg  # a bare model node
    raise ValueError(
        "Predictor: the config has no `model` entry; give a LazyConfig experiment file "
        "(e.g. configs/yolact/yolact_R_50_FPN_550.py) or its `model` node."
    )


# ---------------------------------------------------------------------------------- weights
def _read_checkpoint(path: str) -> Tuple[Mapping[str, torch.Tensor], Dict]:
    """(state dict, the checkpoint's `meta`) through the safe reader (no code from the file runs)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Predictor: weights file '{path}' does not exist; give a checkpoint written by training "
            "(model_final.pth), tools/convert_yolact_weights.py, or an official YOLACT .pth."
        )
    obj = load_checkpoint_file(path)
    state = OrderedDict()
    for k, v in model_state_from(obj, path).items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if isinstance(v, torch.Tensor):
            state[k[len("module.") :] if k.startswith("module.") else k] = v
    if not state:
        raise ValueError(f"Predictor: '{path}' contains no tensors.")
    return state, checkpoint_meta(obj)


def load_weights(model: nn.Module, path: str) -> Dict:
    """Load `path` into `model` strictly, with an error that names what does not fit.

    Returns the checkpoint's `meta` ({"thing_classes": [...]} in checkpoints yolact_d2 trained; {}
    for others)."""
    state, meta = _read_checkpoint(path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if _OFFICIAL_MARKER in state:
        from yolact_d2.checkpoint import convert_official_state_dict

        logger.info("Predictor: '%s' is an official YOLACT checkpoint; converting it.", path)
        state, _ = convert_official_state_dict(state, expected)
    StateDictDiff.between(expected, {k: tuple(v.shape) for k, v in state.items()}).raise_if_mismatch(path, "Predictor: ")
    model.load_state_dict(state, strict=True)
    return meta


# ---------------------------------------------------------------------------------- metadata
def _metadata_for(cfg, num_classes: int, checkpoint_classes: Optional[Sequence[str]] = None) -> Metadata:
    """Class names for drawing: those stored in the checkpoint (its training set's), else the
    config's test (then train) datasets, else COCO for 80 classes, else numbers."""
    if checkpoint_classes is not None and len(checkpoint_classes) == num_classes:
        return Metadata(name="yolact_d2_checkpoint", thing_classes=[str(c) for c in checkpoint_classes])
    if checkpoint_classes is not None:
        logger.warning(
            "Predictor: the checkpoint names %d classes but the model has %d; not using its names.",
            len(checkpoint_classes), num_classes,
        )
    candidates = []
    for split in ("test", "train"):  # registration puts the class names in the metadata
        try:
            names = cfg.dataloader[split].dataset.names
        except Exception:  # noqa: BLE001 - configs without a dataloader (model-only files)
            names = None
        candidates += [names] if isinstance(names, str) else list(names or [])
    if num_classes == 80:
        candidates.append("coco_2017_val")  # Detectron2's built-in COCO metadata
    for name in candidates:
        meta = MetadataCatalog.get(name)
        classes = getattr(meta, "thing_classes", None)
        if classes is not None and len(classes) == num_classes:
            return meta
    return Metadata(name="yolact_d2_predictor", thing_classes=[f"class {i}" for i in range(num_classes)])


# ---------------------------------------------------------------------------------- images
def _check_image(image, index: Optional[int] = None, what: str = "Predictor: image") -> np.ndarray:
    where = what if index is None else f"{what} {index}"
    if not isinstance(image, np.ndarray):
        hint = ""
        if isinstance(image, torch.Tensor):
            hint = " For a tensor use image.permute(1, 2, 0).cpu().numpy() (HWC)."
        elif type(image).__module__.startswith("PIL"):
            hint = " For a PIL image use np.asarray(img.convert('RGB'))[:, :, ::-1] (RGB -> BGR)."
        raise TypeError(
            f"{where} must be a numpy array (H, W, 3) uint8 in BGR order as cv2.imread "
            f"returns, got {type(image).__name__}.{hint}"
        )
    if image.ndim == 2:
        raise ValueError(
            f"{where} is grayscale {image.shape}; it needs 3 channels (H, W, 3) BGR: "
            "use cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)."
        )
    if image.ndim != 3:
        raise ValueError(f"{where} must have shape (H, W, 3), got {image.shape}.")
    if image.shape[2] != 3:
        if image.shape[2] == 4:
            hint = " It looks like BGRA: use cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)."
        elif image.shape[0] == 3:
            hint = " It looks channel-first (3, H, W): use image.transpose(1, 2, 0)."
        elif image.shape[2] == 1:
            hint = " Use cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)."
        else:
            hint = ""
        raise ValueError(f"{where} has {image.shape[2]} channels (shape {image.shape}); expected 3 (BGR).{hint}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"{where} has dtype {image.dtype}; expected uint8 values 0..255. For a float image "
            "in [0, 1] use (image * 255).round().astype(np.uint8)."
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {image.shape}).")
    return image


# ---------------------------------------------------------------------------------- predictor
class Predictor:
    """Build a YOLACT model from a LazyConfig, load weights, predict on BGR images.

    Args:
        config: path of a LazyConfig file, a loaded LazyConfig (with `model`), or a model node.
        weights: checkpoint path (yolact_d2/Detectron2 or official YOLACT); None keeps the random
            initialisation (a warning is logged).
        device: "cpu", "cuda", "cuda:1", ...; default CUDA when available.
        score_threshold: if given, overrides model.post_processor.score_thresh (detections need
            score > it).
        opts: "key=value" LazyConfig overrides, e.g. ["model.post_processor.top_k=100"].
        optimize: inference rewrites from yolact_d2.deploy.optimize (batch norms folded, head convs
            stacked, channels_last, oneDNN conv+ReLU on CPU): same detections up to float rounding,
            ~1.16x faster end to end on the idle 2-core CPU here (more on a busy one). False runs
            the model exactly as configured.
        precision: "fp32" (default), "bf16" (CPU with AVX512-BF16 or AMX, or CUDA: the network's
            weights in bfloat16, pre/post-processing float32; see yolact_d2.deploy.precision),
            "fp16" (CUDA: float16 autocast), "int8" (CPU: exported to ONNX, the network's convs
            statically quantized, run by ONNX Runtime; see yolact_d2.deploy.quantize). A
            precision the machine cannot run is an error naming what is missing.
        calibration: int8 only: a folder of images to calibrate on (the first 100), or None for
            100 images of the config's training dataset. The calibrated model is cached next to
            the weights (<weights>.int8.<hash12>.onnx) and reused while weights, config and
            calibration images are unchanged.
        int8_parts: int8 only: the network parts whose convs go int8, among "backbone", "fpn",
            "protonet", "head" (None: yolact_d2.deploy.quantize.DEFAULT_INT8_PARTS); the others
            stay float32.
        fp16: alias of precision="fp16" (older API).
        fast_path: the real-time path of yolact_d2.deploy.realtime (the network, Fast NMS and mask
            assembly as one fixed-shape graph per input size, captured in a CUDA graph, frames
            uploaded from pinned memory, one small device-to-host read per call). None (default):
            on for CUDA devices, off on the CPU and for int8; True / False; or a dict of
            RealtimeEngine options, e.g. {"cuda_graphs": False} or {"compile": True}. Same
            detections as the eager path (fp32 on the CPU: bit for bit).

    Call with one (H, W, 3) uint8 BGR numpy image -> `Instances` (pred_boxes, scores,
    pred_classes, pred_masks (N, H, W) bool) at the image's size; with a list of images -> a list
    of `Instances` (one batched forward pass). Results stay on `device`.
    """

    def __init__(
        self,
        config,
        weights: Optional[str] = None,
        device: Optional[Union[str, torch.device]] = None,
        *,
        score_threshold: Optional[float] = None,
        opts: Sequence[str] = (),
        optimize: bool = True,
        fp16: bool = False,
        precision: str = "fp32",
        calibration: Optional[str] = None,
        int8_parts: Optional[Sequence[str]] = None,
        fast_path=None,
    ):
        self.cfg, model_cfg = load_model_config(config, opts)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"Predictor: device '{device}' asked for but CUDA is not available; use device='cpu'.")
        if fp16 and precision not in ("fp32", "fp16"):
            raise ValueError(f"Predictor: fp16=True contradicts precision={precision!r}; give only precision.")
        if fp16 and self.device.type != "cuda":
            raise ValueError("Predictor: fp16=True needs a CUDA device (CPU float16 convs are slow and inexact).")
        self.precision = check_precision("fp16" if fp16 else precision, self.device)
        self.fp16 = self.precision == "fp16"
        fast_path_options = resolve_fast_path(fast_path, self.device, self.precision)  # bad values fail early
        model = instantiate(model_cfg)
        if not isinstance(model, nn.Module):
            raise TypeError(f"Predictor: the config's model instantiates to {type(model).__name__}, not a torch module.")
        self._check_model(model)
        meta = {}
        if weights is None:
            logger.warning("Predictor: no weights given; the model keeps its random initialisation.")
        else:
            meta = load_weights(model, os.fspath(weights))
        model.to(self.device).eval()
        if score_threshold is not None:
            model.post_processor.score_thresh = float(score_threshold)
        self._int8 = self.int8_path = None
        if self.precision == "int8":  # the ONNX export wants the model as configured (BN folded there)
            self._build_int8(model, model_cfg, weights, calibration, int8_parts)
        elif optimize:
            optimize_for_inference(model)
        apply_precision(model, self.precision)
        self.model = model
        self.input_format = getattr(model, "input_format", "BGR")
        self.fast_path: Optional[RealtimeEngine] = None
        if fast_path_options is not None:
            self.fast_path = RealtimeEngine(
                model, input_format=self.input_format, precision=self.precision, **fast_path_options
            )
        self.metadata = _metadata_for(self.cfg, int(getattr(model, "num_classes", 0)), meta.get("thing_classes"))

    def _check_model(self, model: nn.Module) -> None:
        """Hook for subclasses: reject a model they cannot run, before any weights are read."""

    def _build_int8(self, model, model_cfg, weights, calibration, int8_parts) -> None:
        """precision="int8": the calibrated ONNX model (cached next to the weights) and its runner."""
        from yolact_d2.deploy.network_graph import OnnxNetworkYolact
        from yolact_d2.deploy.quantize import DEFAULT_INT8_PARTS, int8_model_path

        parts = DEFAULT_INT8_PARTS if int8_parts is None else int8_parts
        self.int8_path = int8_model_path(self.cfg, model_cfg, model, weights, calibration, parts=parts)
        # The network in ONNX Runtime; resize, Fast NMS and masks: the model's own float32 code.
        self._int8 = OnnxNetworkYolact(self.int8_path, model)

    def _to_input(self, image: np.ndarray) -> Dict:
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        # (3, H, W) view of the HWC buffer: the model's float conversion keeps it channels-last.
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return {"image": tensor, "height": height, "width": width}

    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]]):
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise ValueError("Predictor: got an empty list of images.")
        if self.fast_path is not None:
            results = self.fast_path([_check_image(img, None if single else i) for i, img in enumerate(batch)])
            return results[0] if single else results
        inputs = [self._to_input(_check_image(img, None if single else i)) for i, img in enumerate(batch)]
        with torch.inference_mode():
            if self._int8 is not None:
                outputs = self._int8(inputs)
            elif self.fp16:
                with torch.autocast("cuda", dtype=torch.float16):
                    outputs = self.model(inputs)
            else:
                outputs = self.model(inputs)
        results: List[Instances] = [o["instances"] for o in outputs]
        return results[0] if single else results


# ---------------------------------------------------------------------------------- video
class VideoPredictor(Predictor):
    """YolactEdge on a video stream: the full network on keyframes, warped features in between.

        vp = VideoPredictor("configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py", "edge_vid_r50.pth")
        for frame in frames:              # BGR uint8 (H, W, 3), in order
            instances = vp(frame)         # keyframe every `keyframe_interval` frames, else warped
            print(vp.last_was_keyframe)

    The video counterpart of `Predictor` (same config / weights / device / optimize / opts /
    precision arguments and checks). It keeps the last keyframe's state between calls; YolactEdge always
    warps from the last keyframe, not from the previous frame.

    Args:
        keyframe_interval: official schedule: frames 0, N, 2N, ... after a (re)start are keyframes
            (official eval.py uses 5). 1 runs the full network on every frame.
        adaptive: None (the fixed interval), or an `AdaptiveKeyframes` / its keyword dict: a
            warped frame whose predicted motion or warp residual passes the thresholds is run
            again as a keyframe, and gaps may grow up to `max_interval` (see keyframe_schedule).
    Call:
        vp(frame) -> Instances; vp(frame, keyframe=True) forces a full pass; vp(frame,
        keyframe=False) forces a warped pass (a ValueError if there is no keyframe yet or the
        frame size changed). A frame of another size than the keyframe's starts a new keyframe.
        vp.reset() forgets the keyframe (call it between videos).
    After each call: `last_was_keyframe`, `last_reason` (why a keyframe was taken, None for
    warped frames), `last_measures` (adaptive: motion / residual of the warped pass),
    `frame_index` (frames since reset) and `num_keyframes`.
    """

    def __init__(
        self,
        config,
        weights: Optional[str] = None,
        device: Optional[Union[str, torch.device]] = None,
        *,
        keyframe_interval: int = 5,
        optimize: bool = True,
        score_threshold: Optional[float] = None,
        opts: Sequence[str] = (),
        adaptive=None,
        fp16: bool = False,
        precision: str = "fp32",
        calibration: Optional[str] = None,
        int8_parts: Optional[Sequence[str]] = None,
    ):
        self._set_schedule(keyframe_interval, adaptive)  # bad arguments fail before the model is built
        super().__init__(
            config, weights, device, score_threshold=score_threshold, opts=opts, optimize=optimize, fp16=fp16,
            calibration=calibration, int8_parts=int8_parts,
            precision=precision, fast_path=False,  # keyframe state between calls: the eager video path
        )
        self.reset()

    @classmethod
    def from_predictor(cls, predictor: Predictor, *, keyframe_interval: int = 5, adaptive=None) -> "VideoPredictor":
        """A VideoPredictor on `predictor`'s model (shared: no second build or weight load); the
        demo uses it when the config turns out to be a video model."""
        if getattr(predictor, "_int8", None) is not None:
            raise PrecisionError(
                "VideoPredictor.from_predictor: an int8 Predictor holds the single-image graph; build "
                "VideoPredictor(config, weights, precision='int8') for the keyframe and non-keyframe graphs."
            )
        vp = cls.__new__(cls)
        vp.__dict__.update(predictor.__dict__)
        vp._check_model(vp.model)
        vp._set_schedule(keyframe_interval, adaptive)
        vp.reset()
        return vp

    def _set_schedule(self, keyframe_interval: int, adaptive) -> None:
        from yolact_d2.keyframe_schedule import as_adaptive

        if isinstance(keyframe_interval, bool) or int(keyframe_interval) != keyframe_interval or keyframe_interval < 1:
            raise ValueError(f"VideoPredictor: keyframe_interval must be an integer >= 1, got {keyframe_interval!r}.")
        self.keyframe_interval = int(keyframe_interval)
        self.adaptive = as_adaptive(adaptive)

    _int8_video = None  # precision="int8": the two calibrated network graphs in onnxruntime (OnnxVideoNetwork)

    def _build_int8(self, model, model_cfg, weights, calibration, int8_parts) -> None:
        """precision="int8": the keyframe and non-keyframe network graphs (deploy/video_export.py),
        their convs quantized (default parts: DEFAULT_VIDEO_INT8_PARTS), cached next to the weights;
        resize, Fast NMS and masks: the model's own float32 code."""
        from yolact_d2.deploy.quantize import DEFAULT_VIDEO_INT8_PARTS, video_int8_model_paths
        from yolact_d2.deploy.video_export import OnnxVideoNetwork

        parts = DEFAULT_VIDEO_INT8_PARTS if int8_parts is None else int8_parts
        self.int8_paths = video_int8_model_paths(self.cfg, model_cfg, model, weights, calibration, parts=parts)
        self._int8_video = OnnxVideoNetwork(*self.int8_paths, model)

    def _check_model(self, model: nn.Module) -> None:
        if not getattr(model, "is_video_model", False):
            raise ValueError(
                f"VideoPredictor: the config's model ({type(model).__name__}) is not a YolactEdge video model "
                "(it has no flow net to warp keyframe features). Use a video config such as "
                "configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py, or Predictor for single images."
            )

    def reset(self) -> None:
        """Forget the keyframe: the next frame is a keyframe."""
        self.state = None
        self.frame_index = 0
        self.num_keyframes = 0
        self._since_keyframe = 0  # warped frames since the last keyframe
        self.last_was_keyframe = False
        self.last_reason: Optional[str] = None
        self.last_measures: Dict[str, float] = {}

    @property
    def max_gap(self) -> int:
        """Frames from one keyframe to the next at most (the interval, or the adaptive cap)."""
        if self.adaptive is None:
            return self.keyframe_interval
        cap = self.adaptive.max_interval
        return int(cap) if cap is not None else 2 * self.keyframe_interval

    def _keyframe_reason(self, size, keyframe: Optional[bool]) -> Optional[str]:
        """Why this frame must be a keyframe (None: warp it), before running anything."""
        if keyframe is True:
            return "forced"
        if keyframe is False:
            if self.state is None:
                raise ValueError(
                    "VideoPredictor: keyframe=False asks for a warped pass but there is no keyframe yet "
                    "(first frame or after reset()); call vp(frame) or vp(frame, keyframe=True) first."
                )
            if size != tuple(self.state.image_size):
                raise ValueError(
                    f"VideoPredictor: keyframe=False, but this frame is {size[0]}x{size[1]} and the keyframe was "
                    f"{self.state.image_size[0]}x{self.state.image_size[1]}; features cannot be warped across "
                    "frame sizes: take a keyframe (keyframe=None or True)."
                )
            return None
        if keyframe is not None:
            raise TypeError(f"VideoPredictor: keyframe must be None, True or False, got {keyframe!r}.")
        if self.state is None:
            return "first frame"
        if size != tuple(self.state.image_size):
            return f"frame size {size[0]}x{size[1]} != keyframe's {self.state.image_size[0]}x{self.state.image_size[1]}"
        if self._since_keyframe + 1 >= self.max_gap:
            return f"interval {self.max_gap}"
        return None

    def _warped(self, inputs: List[Dict], measure: bool):
        """Warped pass from the stored keyframe; with `measure`, also its motion / residual, read
        from the flow net's own inputs and finest inference flow by a forward hook (no extra work)."""
        from yolact_d2.keyframe_schedule import warp_measures

        if self._int8_video is not None:  # the non-keyframe graph returns what the hook reads below
            outputs, (current, keyframe, flow) = self._int8_video.warped(inputs, self.state)
            return outputs, warp_measures(current, keyframe, flow, self.state.input_size) if measure else {}
        seen: Dict[str, tuple] = {}
        hook = None
        if measure:
            hook = self.model.flow_net.register_forward_hook(
                lambda module, args, out: seen.update(args=args, out=out)
            )
        try:
            outputs, _ = self.model.inference_video(inputs, self.state, keyframe=False)
        finally:
            if hook is not None:
                hook.remove()
        if not measure:
            return outputs, {}
        current, keyframe = seen["args"][:2]  # reduced C3 laterals: this frame, the keyframe
        flow = seen["out"][-1][0]  # the finest prediction run at inference (1/2 scale, warps P4)
        return outputs, warp_measures(current, keyframe, flow, self.state.input_size)

    def _keyframe(self, inputs: List[Dict]):
        if self._int8_video is not None:
            return self._int8_video.keyframe(inputs)
        return self.model.inference_video(inputs, None, keyframe=True)

    def __call__(self, frame: ImageLike, keyframe: Optional[bool] = None) -> Instances:
        if isinstance(frame, (list, tuple)):
            raise TypeError(
                "VideoPredictor: give one frame per call, in video order (a list of frames is not a video "
                "here); use Predictor for a batch of independent images."
            )
        frame = _check_image(frame, what="VideoPredictor: frame")
        size = tuple(frame.shape[:2])
        reason = self._keyframe_reason(size, keyframe)
        inputs = [self._to_input(frame)]
        measures: Dict[str, float] = {}
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            if reason is None:
                adaptive = self.adaptive is not None and keyframe is None
                outputs, measures = self._warped(inputs, measure=adaptive)
                if adaptive:
                    reason = self.adaptive.reason(measures)  # unreliable warp: redo as a keyframe
            if reason is not None:
                outputs, self.state = self._keyframe(inputs)
        self.last_was_keyframe = reason is not None
        self.last_reason, self.last_measures = reason, measures
        if self.last_was_keyframe:
            self.num_keyframes += 1
            self._since_keyframe = 0
        else:
            self._since_keyframe += 1
        self.frame_index += 1
        return outputs[0]["instances"]
