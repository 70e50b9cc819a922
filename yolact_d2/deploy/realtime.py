"""The real-time GPU inference path: one fixed-shape, sync-free graph per input size, replayed.

    from yolact_d2 import Predictor
    predictor = Predictor("yolact/yolact_R_50_FPN_550.py", "model.pth", device="cuda", precision="fp16")
    instances = predictor(frame)          # fast path: on by default on CUDA (fast_path=None)

    engine = RealtimeEngine(model)        # on a bare Yolact model (eval mode, any device)
    instances = engine([frame])           # list of Instances, full-size masks, on the model's device
    padded = engine.run_padded([frame])   # no host sync at all: padded tensors stay on the device

Why not the eager `Yolact.inference`: it filters priors by confidence (a data-dependent shape),
loops over images in Python and reads sizes back from the GPU, so each frame pays dozens of host
synchronisations and kernel launches from Python. `YolactExportWrapper` (deploy/wrapper.py) is
the same detections as a fixed-shape graph (all priors kept, padded outputs + num_detections,
resize inside; proven equal to the eager post-processing in tests/test_export.py). Here it runs:

* per input size (batch, height, width) one cache entry with static buffers: the frames' uint8
  staging buffer (pinned host memory on CUDA, so the upload is an asynchronous DMA), the uint8
  frames on the device, and the padded outputs;
* on CUDA, captured once in a CUDA graph (warm-up on a side stream with cuDNN autotuning, then
  capture, sharing one memory pool between sizes) and replayed: the network, Fast NMS and mask
  assembly are one launch in one stream;
* in the network's precision (fp32, or fp16 / bf16 weights through `precision.cast_network`;
  the models are channels_last after `optimize_for_inference`), pre/post-processing float32;
* with one device-to-host read per call: the detection counts (a few bytes), needed to cut the
  padded rows into Instances; boxes, scores, classes and masks stay on the device.

On the CPU the same code runs without the graph (the frames are read in place, no pinned
upload): that is the form the tests compare with the eager Predictor, bit for bit in fp32.
Standard (greedy) NMS cannot be captured (its kept count is data-dependent and read back), so
with it the entries run eagerly. `compile=True` also passes the graph through torch.compile
(before capture); off by default: not measured yet.
"""
import contextlib
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.structures import Boxes, Instances

from yolact_d2.deploy.precision import cast_network, check_precision
from yolact_d2.deploy.wrapper import YolactExportWrapper

__all__ = ["RealtimeEngine", "RealtimeError", "SizeEntry", "FrameGraph", "resolve_fast_path"]

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class RealtimeError(ValueError):
    """A fast-path option this model or device cannot run (the message names why and what to do)."""


def resolve_fast_path(fast_path, device: torch.device, precision: str) -> Optional[Dict]:
    """Predictor's `fast_path` argument -> RealtimeEngine options, or None for the eager path.

    None: on for CUDA devices, off elsewhere (and off for int8, which runs in ONNX Runtime);
    True / False; or a dict of RealtimeEngine options (on, with them: {"cuda_graphs": False})."""
    if fast_path is None:
        return {} if device.type == "cuda" and precision != "int8" else None
    if isinstance(fast_path, dict):
        options = dict(fast_path)
    elif isinstance(fast_path, bool):
        options = {} if fast_path else None
    else:
        raise TypeError(f"fast_path must be None, True, False or a dict of RealtimeEngine options, got {fast_path!r}.")
    if options is not None and precision == "int8":
        raise RealtimeError(
            "fast_path: precision='int8' runs in ONNX Runtime on the CPU and has no fast path; use "
            "fast_path=None/False with int8, or precision 'fp32'/'fp16'/'bf16' on CUDA."
        )
    return options


class FrameGraph(YolactExportWrapper):
    """frames (B, H, W, 3) uint8 BGR, as the host holds them -> the wrapper's padded outputs.

    Differs from the wrapper only where precision needs it: the normalised image is cast to the
    network's dtype (fp16 / bf16 weights). The wrapper's own preprocessing is capture-safe (its
    BGR -> RGB flip reads no host tensor)."""

    def __init__(self, model: nn.Module, input_format: str = "BGR"):
        dtype = next(model.backbone.parameters()).dtype
        # The wrapper's prior probe is float32; a cast network gets it in its own dtype.
        hook = model.backbone.register_forward_pre_hook(lambda module, args: tuple(a.to(dtype) for a in args))
        try:
            super().__init__(model)
        finally:
            hook.remove()
        self.rgb_frames = input_format == "RGB"  # the model wants RGB: flip the BGR frames first

    @property
    def network_dtype(self) -> torch.dtype:
        return next(self.model.backbone.parameters()).dtype

    def _normalize(self, images: torch.Tensor, resized: Tuple[int, int]) -> torch.Tensor:
        return super()._normalize(images, resized).to(self.network_dtype)

    def forward(self, frames: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.rgb_frames:
            frames = frames.flip(3)  # as Predictor._to_input: a BGR -> RGB copy, still (H, W, 3)
        # (B, 3, H, W) view of the HWC buffer: channels-last, like the eager path's input
        return super().forward(frames.permute(0, 3, 1, 2))


class SizeEntry:
    """Static buffers (and the CUDA graph) of one input size (batch, height, width)."""

    def __init__(self, key: Tuple[int, int, int], device: torch.device, pinned: bool):
        self.key = key
        self.frames = torch.empty((*key, 3), dtype=torch.uint8, device=device)  # the graph's input
        # Host side: pinned memory (asynchronous DMA) for a device, else the input itself.
        self.staging = torch.empty((*key, 3), dtype=torch.uint8, pin_memory=True) if pinned else self.frames
        self.staging_np = self.staging.numpy()
        self.upload_done = torch.cuda.Event() if pinned else None
        self.outputs: Optional[Tuple[torch.Tensor, ...]] = None  # static outputs once captured
        self.graph = None  # torch.cuda.CUDAGraph, or None: run eagerly
        self.runs = 0
        self.graph_error: Optional[str] = None  # why a capture failed (auto mode falls back)


@contextlib.contextmanager
def _cudnn_autotune(enabled: bool):
    """cuDNN picks the fastest conv algorithms during warm-up / capture only (the graph keeps
    them); the global flag is restored after."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or saved
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class RealtimeEngine:
    """The fast path on an eval-mode Yolact model (see the module docstring).

    Args:
        model: a Yolact (or YolactEdge image) model in eval mode, ideally after
            `optimize_for_inference`; its device is the engine's.
        input_format: the model's input format ("BGR" or "RGB"); frames are always BGR uint8.
        precision: "fp32", "fp16" (CUDA) or "bf16": the network is cast once (cast_network) unless
            it already is in that dtype.
        cuda_graphs: None = on for CUDA (off with standard NMS, which cannot be captured); True
            insists (an error where impossible); False runs the same graph eagerly.
        compile: pass the graph through torch.compile (before the capture); off by default.
        max_sizes: input sizes kept in the cache (least recently used dropped beyond it).
        capture_after: a size is captured on its n-th run (default 2: a folder of images of
            all-different sizes never pays a capture per image; a stream pays it on frame 2).
        warmup: eager runs before a capture (cuDNN autotuning, lazy initialisation).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_format: str = "BGR",
        precision: str = "fp32",
        cuda_graphs: Optional[bool] = None,
        compile: bool = False,
        max_sizes: int = 8,
        capture_after: int = 2,
        warmup: int = 2,
    ):
        if model.training:
            raise RealtimeError("RealtimeEngine: the model is in training mode; call model.eval() first.")
        parts = ("backbone", "protonet", "head", "post_processor", "prior_generator")
        missing = [n for n in parts if not hasattr(model, n)]
        if missing:
            raise RealtimeError(
                f"RealtimeEngine: {type(model).__name__} has no {', '.join(missing)}; the fast path runs "
                "Yolact models (yolact_d2.modeling.Yolact, YolactEdge image inference)."
            )
        if input_format not in ("BGR", "RGB"):
            raise RealtimeError(f"RealtimeEngine: input_format must be 'BGR' or 'RGB', got {input_format!r}.")
        for name, value in (("max_sizes", max_sizes), ("capture_after", capture_after)):
            if int(value) < 1:
                raise RealtimeError(f"RealtimeEngine: {name} must be >= 1, got {value!r}.")
        self.device = torch.device(model.device)
        self.precision = check_precision(precision, self.device)
        if self.precision not in _DTYPES:
            raise RealtimeError(f"RealtimeEngine: precision {precision!r} has no fast path; use fp32, fp16 or bf16.")
        self.cuda_graphs, self.cuda_graphs_reason = self._graphs_choice(model, cuda_graphs)
        self.pinned = self.device.type == "cuda"
        self.pinned_reason = None if self.pinned else (
            f"the device is '{self.device}': frames are copied once into the input buffer, there is no "
            "host-to-device upload to pin memory for"
        )
        dtype = _DTYPES[self.precision]
        current = next(model.backbone.parameters()).dtype
        if current != dtype:
            if current != torch.float32:
                raise RealtimeError(
                    f"RealtimeEngine: the network is already {current} but precision={precision!r} asks for "
                    f"{dtype}; build the model again (or pass precision matching it)."
                )
            cast_network(model, dtype)  # once, in place (the Predictor's eager path shares the model)
        self.graph_module = FrameGraph(model, input_format).eval()
        self._forward = torch.compile(self.graph_module, dynamic=False) if compile else self.graph_module
        self.compiled = bool(compile)
        self.max_sizes = int(max_sizes)
        self.capture_after = int(capture_after)
        self.warmup = int(warmup)
        self._entries: "OrderedDict[Tuple[int, int, int], SizeEntry]" = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    def _graphs_choice(self, model: nn.Module, wanted: Optional[bool]) -> Tuple[bool, Optional[str]]:
        """(use CUDA graphs, why not)."""
        if wanted not in (None, True, False):
            raise RealtimeError(f"RealtimeEngine: cuda_graphs must be None, True or False, got {wanted!r}.")
        if wanted is False:
            return False, "cuda_graphs=False"
        if model.post_processor.standard_nms:
            why = ("standard NMS (post_processor.standard_nms=True) keeps a data-dependent number of boxes, "
                   "read back to the host, which a CUDA graph cannot capture")
            if wanted:
                raise RealtimeError(f"RealtimeEngine: cuda_graphs=True is impossible here: {why}; use Fast NMS "
                                    "or cuda_graphs=None/False.")
            return False, why
        if self.device.type != "cuda":
            if wanted:
                raise RealtimeError(
                    f"RealtimeEngine: cuda_graphs=True needs a CUDA device; the model is on '{self.device}'. "
                    "Use cuda_graphs=None/False (the same path without graph capture) or device='cuda'."
                )
            return False, f"the device is '{self.device}' (CUDA graphs need a CUDA device)"
        return True, None

    # ------------------------------------------------------------------ the per-size cache
    @property
    def sizes(self) -> List[Tuple[int, int, int]]:
        """The cached (batch, height, width) keys, least recently used first."""
        return list(self._entries)

    @property
    def captured_sizes(self) -> List[Tuple[int, int, int]]:
        """The cached sizes that replay a CUDA graph."""
        return [k for k, e in self._entries.items() if e.graph is not None]

    @property
    def graph_errors(self) -> Dict[str, str]:
        """Input sizes whose CUDA graph capture failed (they run without a graph), with the error."""
        return {str(k): e.graph_error for k, e in self._entries.items() if e.graph_error}

    def entry(self, batch: int, height: int, width: int) -> SizeEntry:
        key = (int(batch), int(height), int(width))
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        while len(self._entries) >= self.max_sizes:
            old, _ = self._entries.popitem(last=False)
            logger.info("RealtimeEngine: dropping the cached input size %s (max_sizes=%d)", old, self.max_sizes)
        made = SizeEntry(key, self.device, self.pinned)
        self._entries[key] = made
        return made

    # ------------------------------------------------------------------ running
    def _upload(self, entry: SizeEntry, frames: Sequence[np.ndarray]) -> None:
        if entry.upload_done is not None:
            entry.upload_done.synchronize()  # run_padded returns unsynchronised: the last DMA must be done
        for i, frame in enumerate(frames):
            entry.staging_np[i] = frame
        if entry.staging is not entry.frames:
            entry.frames.copy_(entry.staging, non_blocking=True)
            entry.upload_done.record(torch.cuda.current_stream(self.device))

    def _capture(self, entry: SizeEntry) -> None:
        """Warm-up on a side stream, then capture (as torch.cuda.graphs' documentation prescribes)."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with _cudnn_autotune(True):
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self._forward(entry.frames)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # One pool for every size: a later capture may reuse an earlier graph's intermediate
            # blocks, which is safe because graphs replay one at a time and every caller copies
            # the outputs it keeps before the next replay. thread_local: CUDA work of other
            # threads (a data loader's pinning thread) does not invalidate the capture.
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                entry.outputs = self._forward(entry.frames)
        entry.graph = graph

    def _run(self, entry: SizeEntry) -> Tuple[torch.Tensor, ...]:
        due = entry.runs + 1 >= self.capture_after
        if self.cuda_graphs and due and entry.graph is None and entry.graph_error is None:
            try:
                self._capture(entry)
            except RuntimeError as e:  # auto mode: run eagerly, loudly; cuda_graphs=True was checked above
                entry.graph_error = f"{type(e).__name__}: {e}"
                entry.graph, entry.outputs = None, None
                logger.warning("RealtimeEngine: CUDA graph capture failed for input size %s (%s); running "
                               "that size without a graph.", entry.key, entry.graph_error)
        entry.runs += 1
        if entry.graph is not None:
            entry.graph.replay()
            return entry.outputs
        return self._forward(entry.frames)

    def _padded(self, frames: Sequence[np.ndarray]) -> Tuple[torch.Tensor, ...]:
        """The padded outputs in the entry's static buffers (overwritten by the next run of that size)."""
        height, width = frames[0].shape[:2]
        entry = self.entry(len(frames), height, width)
        # An outer autocast (e.g. a caller's fp16 context) would move the float32 post-processing
        # to fp16 and change the graph: the precision is the network's dtype, nothing else.
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with on_device, torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            self._upload(entry, frames)
            return self._run(entry)

    def run_padded(self, frames: Sequence[np.ndarray]) -> Tuple[torch.Tensor, ...]:
        """Same-size BGR uint8 frames (H, W, 3) -> (boxes, scores, classes, masks, num_detections
        [, mask_scores]) padded to max_detections rows (class -1 below num_detections), on the
        device, with no host synchronisation (copies: the next run reuses the static buffers)."""
        frames = _same_size(frames)
        with torch.inference_mode():
            return tuple(t.clone() for t in self._padded(frames))

    def __call__(self, frames: Sequence[np.ndarray]) -> List[Instances]:
        """BGR uint8 frames (H, W, 3), any sizes -> one Instances per frame (full-size masks, on the
        device), as Predictor returns them. Frames of one size run as one batch."""
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault(tuple(frame.shape[:2]), []).append(i)
        results: List[Optional[Instances]] = [None] * len(frames)
        with torch.inference_mode():
            for size, idx in groups.items():
                outputs = self._padded([frames[i] for i in idx])
                counts = outputs[4].tolist()  # the one device-to-host read: how many rows are real
                for row, (i, n) in enumerate(zip(idx, counts)):
                    results[i] = _instances(outputs, row, n, size)
        return results


def _same_size(frames: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    sizes = sorted({tuple(f.shape) for f in frames})
    if not frames or len(sizes) != 1:
        raise RealtimeError(f"RealtimeEngine.run_padded: give one or more frames of one shape, got shapes {sizes}.")
    return frames


def _instances(outputs: Tuple[torch.Tensor, ...], row: int, n: int, size: Tuple[int, int]) -> Instances:
    """Rows [:n] of image `row` as Instances (device copies: the static buffers are reused)."""
    boxes, scores, classes, masks = (t[row, :n].clone() for t in outputs[:4])
    inst = Instances(size)
    inst.pred_boxes = Boxes(boxes)
    inst.scores = scores
    inst.pred_classes = classes
    inst.pred_masks = masks
    if len(outputs) > 5:  # YOLACT++: class score x predicted mask IoU
        inst.mask_scores = outputs[5][row, :n].clone()
    return inst
