"""int8 on the CPU: post-training static quantization of an exported YOLACT with ONNX Runtime.

    from yolact_d2.deploy.quantize import quantize_onnx_int8
    quantize_onnx_int8("yolact.onnx", "yolact.int8.onnx", images)   # images: BGR uint8 (H, W, 3)

Engine chosen by measurement on this 2-core AVX512-VNNI CPU (one 256->256 3x3 conv at 69x69):
ONNX Runtime QDQ per-channel 11.2 ms, PyTorch quantized fbgemm 16.1, onednn 24.0, x86 25.1,
oneDNN fp32 61.3; PyTorch's eager quantized ops are also deprecated in torch 2.14.

Per-part mixed precision (YolactEdge's backbone + protonet recipe was the starting point; the
default, every part, is by measurement, see DEFAULT_INT8_PARTS): only the Conv nodes of the
parts in `parts` get int8 weights (per output channel) and int8 activations, with the Relu /
MaxPool nodes right after them; everything else (the other parts, resize, softmax, box decoding,
Fast NMS, mask assembly) stays float32. A Conv
node's part comes from its weight's name, which the exporter takes from the module path
("model.backbone.bottom_up.res2.0.conv1.weight").
"""
import hashlib
import json
import logging
import os
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

__all__ = [
    "PARTS",
    "DEFAULT_INT8_PARTS",
    "conv_parts",
    "follower_nodes",
    "quantize_onnx_int8",
    "int8_cache_path",
    "calibration_images",
    "build_int8_onnx",
    "int8_model_path",
    "OnnxYolactModel",
    "VIDEO_PARTS",
    "DEFAULT_VIDEO_INT8_PARTS",
    "calibration_pairs",
    "build_video_int8_onnx",
    "video_int8_model_paths",
]

logger = logging.getLogger(__name__)

# Weight-name prefixes of the network's parts, most specific first (flow_net, spa: YolactEdge video).
_PART_PREFIXES = (
    ("backbone", "model.backbone.bottom_up."),
    ("fpn", "model.backbone."),
    ("protonet", "model.protonet."),
    ("head", "model.head."),
    ("flow_net", "model.flow_net."),
    ("spa", "model.spa."),
)
PARTS = ("backbone", "fpn", "protonet", "head")  # of an image model
VIDEO_PARTS = PARTS + ("flow_net", "spa")
# Chosen by measurement (README, "int8"): on the trained shapes model every part at int8 costs
# no more AP than YolactEdge's backbone + protonet (segm 55.58 vs 55.54, fp32 55.72) and R50-550
# runs ~1.2x faster with it (653 vs 806 ms, fp32 2289 ms, on a busy 2-core CPU). YolactEdge's
# recipe stays one argument away: parts=("backbone", "protonet").
DEFAULT_INT8_PARTS = PARTS
DEFAULT_CALIBRATION_IMAGES = 100  # images (or a video's frames) the activation ranges are taken over
# Video: the image default plus the flow net, which YolactEdge's vid config runs at int8
# (torch2trt_flow_net_int8); SPA stays float as there (torch2trt_spa_int8=False). Not measured for
# accuracy: no trained video model exists here (see the README's int8 video figures for speed).
DEFAULT_VIDEO_INT8_PARTS = DEFAULT_INT8_PARTS + ("flow_net",)
# Bump when what a cached int8 model holds changes for the same inputs (settings, graph layout).
_CACHE_FORMAT = 4  # 3: the int8 graph is the network alone (deploy.network_graph); 4: + int8 Relu / MaxPool


def _part_of(weight_name: str) -> Optional[str]:
    for part, prefix in _PART_PREFIXES:
        if weight_name.startswith(prefix):
            return part
    return None


def conv_parts(model) -> Dict[str, List[str]]:
    """{part: [Conv node names]} of an ONNX model (onnx.ModelProto); convs of no known part
    (e.g. YOLACT++'s mask re-scoring) under "other"."""
    found: Dict[str, List[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            found.setdefault(_part_of(node.input[1]) or "other", []).append(node.name)
    return found


# Ops after a quantized Conv that run on the int8 values too. Without them each Conv -> Relu
# (ORT's exporter keeps them apart) and the stem's MaxPool leave a DequantizeLinear -> float op ->
# QuantizeLinear round trip at full resolution: R50-550 network 172 -> 158 ms (same rounds, 2
# threads) with them, Q/DQ 15.4 -> 2.7 ms. Relu is then folded into the Conv's output range (ORT's
# QDQ removable activation); int8 MaxPool is exact on the quantized values. Quantizing the Adds
# and Resizes as well changed nothing measurable (158.8 / 158.5 ms).
_FOLLOWER_OPS = ("Relu", "MaxPool")


def follower_nodes(model, convs: Iterable[str]) -> List[str]:
    """Names of the Relu / MaxPool nodes whose first input comes from one of the Conv nodes
    `convs`, directly or through ops without weights (the residual Add, the protonet's Resize): the
    nearest Conv upstream gives a node its part, and with it its precision."""
    chosen = set(convs)
    producer = {out: node for node in model.graph.node for out in node.output}
    found: List[str] = []
    for node in model.graph.node:
        if node.op_type not in _FOLLOWER_OPS or not node.input:
            continue
        source = producer.get(node.input[0])
        while source is not None and source.op_type != "Conv" and source.input:
            source = producer.get(source.input[0])
        if source is not None and source.op_type == "Conv" and source.name in chosen:
            found.append(node.name)
    return found


def _check_parts(parts: Iterable[str], known: Sequence[str] = PARTS) -> tuple:
    parts = tuple(parts)
    unknown = [p for p in parts if p not in known]
    if unknown:
        raise ValueError(f"int8 parts must be among {', '.join(known)}; got unknown {unknown}.")
    if not parts:
        raise ValueError("int8 parts is empty: nothing would be quantized; use precision='fp32' instead.")
    return parts


def image_feed(image: np.ndarray) -> Dict[str, np.ndarray]:
    """A BGR uint8 (H, W, 3) image as the exported graphs' "images" input (1, 3, H, W)."""
    return {"images": np.ascontiguousarray(image.transpose(2, 0, 1))[None]}


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over graph feeds ({input name: array}), one a
    batch (the graph resizes inside, so images of any size calibrate the same network input)."""

    def __init__(self, feeds: Sequence[Dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._next = 0

    def get_next(self):
        if self._next >= len(self._feeds):
            return None
        feed = self._feeds[self._next]
        self._next += 1
        return feed() if callable(feed) else feed  # a callable: built on demand (large video state)

    def rewind(self):
        self._next = 0


def quantize_onnx_int8(
    fp32_onnx_path: str,
    out_path: str,
    calibration_images: Sequence[np.ndarray],
    per_channel: bool = True,
    parts: Sequence[str] = DEFAULT_INT8_PARTS,
    activation_type: str = "uint8",
) -> str:
    """Static QDQ quantization of an exported YOLACT: the Conv nodes of `parts` int8, the rest float.

    calibration_images: BGR uint8 (H, W, 3) images (activation ranges: MinMax over them), or, for
        a graph with more inputs (YolactEdge's non-keyframe graph), feeds {input name: array} or
        callables returning one.
    activation_type: "uint8" (measured faster here than "int8" with ORT on AVX512-VNNI) or "int8".
    Returns `out_path`.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    parts = _check_parts(parts, VIDEO_PARTS)
    if activation_type not in ("uint8", "int8"):
        raise ValueError(f"activation_type must be 'uint8' or 'int8', got {activation_type!r}.")
    images = list(calibration_images)
    if not images:
        raise ValueError("quantize_onnx_int8: no calibration images; give at least one BGR uint8 image.")
    for i, image in enumerate(images):
        if isinstance(image, dict) or callable(image):  # already a feed
            continue
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise ValueError(
                f"quantize_onnx_int8: calibration image {i} must be a BGR uint8 (H, W, 3) array, got "
                f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}."
            )
    graph = onnx.load(fp32_onnx_path, load_external_data=False)
    by_part = conv_parts(graph)
    chosen = [name for part in parts for name in by_part.get(part, [])]
    if not chosen:
        raise ValueError(
            f"quantize_onnx_int8: '{fp32_onnx_path}' has no Conv node of parts {list(parts)} "
            f"(found parts: {sorted(by_part)}); is it a yolact_d2 export?"
        )
    act = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    quantize_static(
        fp32_onnx_path,
        out_path,
        _FeedReader([image if isinstance(image, dict) or callable(image) else image_feed(image) for image in images]),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv", *_FOLLOWER_OPS],
        nodes_to_quantize=chosen + follower_nodes(graph, chosen),
        per_channel=per_channel,
        activation_type=act,
        weight_type=QuantType.QInt8,
        # MinMax keeps one scalar min and max per tensor and image: small for any N. (Its
        # CalibMaxIntermediateOutputs option is avoided: onnxruntime 1.32 drops those batches unmerged.)
        calibrate_method=CalibrationMethod.MinMax,
    )
    total = sum(map(len, by_part.values()))
    logger.info("int8: %d of %d convs quantized (%s) -> %s", len(chosen), total, parts, out_path)
    return out_path


# ------------------------------------------------------------------------ calibration data
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def calibration_files(cfg, calibration: Optional[str], num_images: int = DEFAULT_CALIBRATION_IMAGES) -> List[str]:
    """Image files to calibrate on: the first `num_images` of a folder (sorted names), or, with
    None, of the config's training dataset (dataloader.train.dataset.names, DatasetCatalog)."""
    if calibration is not None:
        if not os.path.isdir(calibration):
            raise FileNotFoundError(f"int8 calibration: '{calibration}' is not a folder of images.")
        files = sorted(
            os.path.join(calibration, f) for f in os.listdir(calibration) if f.lower().endswith(_IMAGE_EXTS)
        )
        if not files:
            raise ValueError(f"int8 calibration: '{calibration}' holds no image ({', '.join(_IMAGE_EXTS)}).")
        return files[:num_images]
    from detectron2.data import DatasetCatalog

    try:
        names = cfg.dataloader.train.dataset.names
    except (AttributeError, KeyError):
        raise ValueError(
            "int8 calibration: the config has no dataloader.train.dataset.names to take images from; "
            "pass calibration=<folder of images>."
        ) from None
    names = [names] if isinstance(names, str) else list(names)
    files: List[str] = []
    for name in names:
        if name not in DatasetCatalog.list():
            raise KeyError(
                f"int8 calibration: dataset '{name}' (dataloader.train.dataset.names) is not registered; "
                "load its config or pass calibration=<folder of images>."
            )
        try:
            records = DatasetCatalog.get(name)
        except OSError as exc:  # e.g. COCO registered but its annotation json not downloaded
            raise FileNotFoundError(
                f"int8 calibration: dataset '{name}' (dataloader.train.dataset.names) cannot be loaded: {exc}. "
                "Pass calibration=<folder of images / a video's frames> (a video model reads the folder "
                "as one video, frames in name order), or prepare the dataset (datasets/README.md)."
            ) from exc
        files += [d["file_name"] for d in records]
        if len(files) >= num_images:
            break
    if not files:
        raise ValueError(f"int8 calibration: datasets {names} have no images; pass calibration=<folder>.")
    return files[:num_images]


def calibration_images(files: Sequence[str]) -> List[np.ndarray]:
    """BGR uint8 images read with cv2; an unreadable file is an error naming it."""
    import cv2

    images = []
    for f in files:
        image = cv2.imread(f, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"int8 calibration: cv2 cannot read '{f}' as an image.")
        images.append(image)
    return images


# ------------------------------------------------------------------------------- cache
def int8_cache_path(weights: str, settings: Dict, calibration_files: Sequence[str]) -> str:
    """`<weights>.int8.<hash12>.onnx`: hash of the weights file's bytes, the calibration settings
    (config, parts, ...) and the calibration images' bytes, so any change rebuilds."""
    h = hashlib.sha256()
    for path in [weights] + list(calibration_files):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    h.update(json.dumps({"format": _CACHE_FORMAT, **settings}, sort_keys=True, default=str).encode())
    return f"{weights}.int8.{h.hexdigest()[:12]}.onnx"


def build_int8_onnx(
    model,
    weights: str,
    files: Sequence[str],
    settings: Dict,
    parts: Sequence[str] = DEFAULT_INT8_PARTS,
    per_channel: bool = True,
    activation_type: str = "uint8",
) -> str:
    """The int8 ONNX of `model` (a Yolact, weights loaded, eval) for `weights`: the cached file
    when its hash matches, else export the network's fp32 ONNX (folds `model`'s batch norms in
    place; deploy.network_graph: pre/post-processing stay in PyTorch), quantize, save. `settings`:
    what else defines the model (e.g. the config dump) for the hash."""
    from yolact_d2.deploy.network_graph import export_network_onnx, network_feed
    from yolact_d2.deploy.optimize import fold_batch_norm

    parts = _check_parts(parts)
    settings = dict(settings, parts=list(parts), per_channel=per_channel, activation_type=activation_type)
    path = int8_cache_path(weights, settings, files)
    if os.path.isfile(path):
        logger.info("int8: reusing the calibrated model %s", path)
        return path
    logger.info("int8: calibrating on %d images -> %s", len(files), path)
    fold_batch_norm(model)
    with tempfile.TemporaryDirectory(prefix="yolact_int8_") as tmp:
        fp32 = export_network_onnx(model, os.path.join(tmp, "fp32.onnx"))
        partial = path + ".partial"  # an interrupted build never looks like a cache hit
        # Preprocessed on demand (a 550x550 float feed is 3.6 MB; 100 of them need not coexist).
        feeds = [lambda image=image: network_feed(model, image) for image in calibration_images(files)]
        quantize_onnx_int8(fp32, partial, feeds, per_channel, parts, activation_type)
        os.replace(partial, path)
    return path


def OnnxYolactModel(path: str, model):
    """A Detectron2-style model (list of {"image", "height", "width"} -> [{"instances"}]) for
    Detectron2's inference_on_dataset at int8: `model`'s pre/post-processing around the int8
    network graph at `path` (deploy.network_graph.OnnxNetworkYolact)."""
    from yolact_d2.deploy.network_graph import OnnxNetworkYolact

    return OnnxNetworkYolact(path, model)


def _config_fingerprint(model_cfg) -> str:
    """The model node as text, for the cache hash (callables by qualified name, never by address)."""
    from omegaconf import OmegaConf

    def name(value):
        if callable(value):
            return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
        return str(value)

    try:
        tree = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else model_cfg
    except Exception:  # unresolvable interpolations: hash them as written
        tree = OmegaConf.to_container(model_cfg, resolve=False)
    return json.dumps(tree, sort_keys=True, default=name)


def int8_model_path(
    cfg,
    model_cfg,
    model,
    weights: Optional[str],
    calibration: Optional[str] = None,
    num_images: int = DEFAULT_CALIBRATION_IMAGES,
    parts: Sequence[str] = DEFAULT_INT8_PARTS,
) -> str:
    """Predictor / evaluation entry: the calibrated int8 ONNX for (config, weights, calibration),
    built or taken from the cache next to the weights. `model`: the Yolact with those weights."""
    files, settings = _calibration_inputs(cfg, model_cfg, model, weights, calibration, num_images)
    return build_int8_onnx(model, os.fspath(weights), files, settings, parts=parts)


def _calibration_inputs(cfg, model_cfg, model, weights, calibration, num_images):
    """(calibration files, the settings hashed with them) for the image and the video entries."""
    if weights is None:
        raise ValueError(
            "precision='int8' needs a weights file: the calibrated int8 model is cached next to it "
            "(<weights>.int8.<hash>.onnx) and keyed on its bytes."
        )
    if calibration is None and cfg is None:
        raise ValueError("precision='int8' with a bare model node: pass calibration=<folder of images>.")
    files = calibration_files(cfg, calibration, num_images)
    # The post-processor's settings are in the graph too, and the Predictor may change them after
    # instantiating the config (score_threshold=): hash them as the model holds them.
    post = getattr(model, "post_processor", None)
    post = {k: v for k, v in vars(post).items() if isinstance(v, (bool, int, float, str))} if post is not None else {}
    return files, {"model": _config_fingerprint(model_cfg), "post_processor": post, "num_images": len(files)}


# ------------------------------------------------------------------ YolactEdge video models
CALIBRATION_INTERVAL = 5  # keyframe interval of a calibration sequence (official eval.py's)


def calibration_pairs(images: Sequence[np.ndarray], sequence: bool, interval: int = CALIBRATION_INTERVAL):
    """(keyframe, warped frame) pairs that calibrate the non-keyframe graph.

    sequence=True (a folder: the frames of one video in name order): keyframes every `interval`
    frames, each other frame paired with its last keyframe, as at run time. sequence=False (a
    dataset's unrelated stills): each image with itself shifted a few pixels (a panning camera).
    """
    from yolact_d2.deploy.video_export import shifted

    if not sequence:
        return [(image, shifted(image)) for image in images]
    pairs = [(images[k - k % interval], images[k]) for k in range(len(images)) if k % interval]
    if not pairs:
        raise ValueError(
            f"int8 video calibration: a folder is read as one video's frames, keyframe every {interval}; "
            f"{len(images)} frame(s) give no non-keyframe: give at least 2."
        )
    return pairs


def build_video_int8_onnx(
    model,
    weights: str,
    files: Sequence[str],
    settings: Dict,
    parts: Sequence[str] = DEFAULT_VIDEO_INT8_PARTS,
    sequence: bool = False,
    per_channel: bool = True,
    activation_type: str = "uint8",
):
    """The int8 keyframe and non-keyframe graphs of a YolactEdge video model (weights loaded, eval):
    (`<weights>.int8.<hash12>.keyframe.onnx`, `....warped.onnx`), reused when both exist, else
    exported (the network graphs of deploy.video_export; folds `model`'s batch norms in place)
    and calibrated: the keyframe graph on the images, the warped graph on `calibration_pairs` with
    the state the int8 keyframe graph gives (what it sees at run time)."""
    import torch

    from yolact_d2.deploy.network_graph import OnnxNetworkYolact, network_feed
    from yolact_d2.deploy.optimize import fold_batch_norm
    from yolact_d2.deploy.video_export import STATE_NAMES, export_video_network_onnx

    parts = _check_parts(parts, VIDEO_PARTS)
    settings = dict(settings, video="network graphs", parts=list(parts), per_channel=per_channel,
                    activation_type=activation_type, sequence=sequence, interval=CALIBRATION_INTERVAL)
    base = int8_cache_path(weights, settings, files)[: -len(".onnx")]
    paths = (base + ".keyframe.onnx", base + ".warped.onnx")
    if all(os.path.isfile(p) for p in paths):
        logger.info("int8: reusing the calibrated video graphs %s, %s", *paths)
        return paths
    logger.info("int8: calibrating the video graphs on %d images -> %s", len(files), paths)
    fold_batch_norm(model)
    images = calibration_images(files)
    with tempfile.TemporaryDirectory(prefix="yolact_int8_video_") as tmp:
        key32, warped32 = export_video_network_onnx(model, os.path.join(tmp, "keyframe.onnx"),
                                                    os.path.join(tmp, "warped.onnx"))
        partial = [p + ".partial" for p in paths]  # an interrupted build never looks like a cache hit
        feeds = [lambda image=image: network_feed(model, image) for image in images]  # on demand
        quantize_onnx_int8(key32, partial[0], feeds, per_channel, parts, activation_type)
        keyframe = OnnxNetworkYolact(partial[0], model, extra_outputs=STATE_NAMES)

        def warped_feed(key, cur):
            state = keyframe.network(torch.from_numpy(network_feed(model, key)["images"]))
            return dict(network_feed(model, cur), **{name: state[name].numpy() for name in STATE_NAMES})

        feeds = [lambda key=key, cur=cur: warped_feed(key, cur) for key, cur in calibration_pairs(images, sequence)]
        quantize_onnx_int8(warped32, partial[1], feeds, per_channel, parts, activation_type)
        for done, path in zip(partial, paths):
            os.replace(done, path)
    return paths


def video_int8_model_paths(
    cfg,
    model_cfg,
    model,
    weights: Optional[str],
    calibration: Optional[str] = None,
    num_images: int = DEFAULT_CALIBRATION_IMAGES,
    parts: Sequence[str] = DEFAULT_VIDEO_INT8_PARTS,
):
    """VideoPredictor entry: the calibrated int8 (keyframe, non-keyframe) graphs for (config,
    weights, calibration), built or taken from the cache next to the weights. A calibration folder
    is read as one video's frames (name order), the config's training images as stills."""
    parts = _check_parts(parts, VIDEO_PARTS)  # before any image is looked for
    files, settings = _calibration_inputs(cfg, model_cfg, model, weights, calibration, num_images)
    return build_video_int8_onnx(model, os.fspath(weights), files, settings, parts=parts,
                                 sequence=calibration is not None)
