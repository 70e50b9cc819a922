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
from yolact_d2.export.optimize import optimize_for_inference

__all__ = ["Predictor", "load_model_config", "load_weights", "WeightsMismatchError"]

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
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Predictor: config file '{path}' does not exist; pass a LazyConfig .py file such as "
                "configs/yolact/yolact_R_50_FPN_550.py (relative to the repository) or a loaded config."
            )
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
def _check_image(image, index: Optional[int] = None) -> np.ndarray:
    where = "image" if index is None else f"image {index}"
    if not isinstance(image, np.ndarray):
        hint = ""
        if isinstance(image, torch.Tensor):
            hint = " For a tensor use image.permute(1, 2, 0).cpu().numpy() (HWC)."
        elif type(image).__module__.startswith("PIL"):
            hint = " For a PIL image use np.asarray(img.convert('RGB'))[:, :, ::-1] (RGB -> BGR)."
        raise TypeError(
            f"Predictor: {where} must be a numpy array (H, W, 3) uint8 in BGR order as cv2.imread "
            f"returns, got {type(image).__name__}.{hint}"
        )
    if image.ndim == 2:
        raise ValueError(
            f"Predictor: {where} is grayscale {image.shape}; it needs 3 channels (H, W, 3) BGR: "
            "use cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)."
        )
    if image.ndim != 3:
        raise ValueError(f"Predictor: {where} must have shape (H, W, 3), got {image.shape}.")
    if image.shape[2] != 3:
        if image.shape[2] == 4:
            hint = " It looks like BGRA: use cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)."
        elif image.shape[0] == 3:
            hint = " It looks channel-first (3, H, W): use image.transpose(1, 2, 0)."
        elif image.shape[2] == 1:
            hint = " Use cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)."
        else:
            hint = ""
        raise ValueError(f"Predictor: {where} has {image.shape[2]} channels (shape {image.shape}); expected 3 (BGR).{hint}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"Predictor: {where} has dtype {image.dtype}; expected uint8 values 0..255. For a float image "
            "in [0, 1] use (image * 255).round().astype(np.uint8)."
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"Predictor: {where} is empty (shape {image.shape}).")
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
        optimize: inference rewrites from yolact_d2.export.optimize (batch norms folded, head convs
            stacked, channels_last, oneDNN conv+ReLU on CPU): same detections up to float rounding,
            ~1.16x faster end to end on the idle 2-core CPU here (more on a busy one). False runs
            the model exactly as configured.
        fp16: CUDA only: run the network under float16 autocast.

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
    ):
        self.cfg, model_cfg = load_model_config(config, opts)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"Predictor: device '{device}' asked for but CUDA is not available; use device='cpu'.")
        if fp16 and self.device.type != "cuda":
            raise ValueError("Predictor: fp16=True needs a CUDA device (CPU float16 convs are slow and inexact).")
        self.fp16 = fp16
        model = instantiate(model_cfg)
        if not isinstance(model, nn.Module):
            raise TypeError(f"Predictor: the config's model instantiates to {type(model).__name__}, not a torch module.")
        meta = {}
        if weights is None:
            logger.warning("Predictor: no weights given; the model keeps its random initialisation.")
        else:
            meta = load_weights(model, os.fspath(weights))
        model.to(self.device).eval()
        if score_threshold is not None:
            model.post_processor.score_thresh = float(score_threshold)
        if optimize:
            optimize_for_inference(model)
        self.model = model
        self.input_format = getattr(model, "input_format", "BGR")
        self.metadata = _metadata_for(self.cfg, int(getattr(model, "num_classes", 0)), meta.get("thing_classes"))

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
        inputs = [self._to_input(_check_image(img, None if single else i)) for i, img in enumerate(batch)]
        with torch.inference_mode():
            if self.fp16:
                with torch.autocast("cuda", dtype=torch.float16):
                    outputs = self.model(inputs)
            else:
                outputs = self.model(inputs)
        results: List[Instances] = [o["instances"] for o in outputs]
        return results[0] if single else results
