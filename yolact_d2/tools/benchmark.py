"""YOLACT inference latency: per stage and end to end, against Mask R-CNN and the official code.

    python tools/benchmark.py                                  # R50-550, batch 1 and 8, CPU fp32
    python tools/benchmark.py --official-root /path/to/dbolya/yolact \\
        --official-weights yolact_resnet50_54_800000.pth --weights yolact_R_50_FPN_550.pth
    python tools/benchmark.py --device cuda --precisions fp32 fp16 --json out.json
    python tools/benchmark.py --precisions fp32 bf16 --batch-sizes 1  # CPU bf16, timed next to our fp32
    python tools/benchmark.py --weights w.pth --official-root /path/to/dbolya/yolact --official-weights o.pth \
        --precisions fp32 bf16 int8 --calibration images/ --batch-sizes 1   # one round robin, ratios to official
    python tools/benchmark.py --config configs/shapes/yolact_shapes.py --weights model_final.pth \
        --precisions fp32 bf16 int8 --eval-dataset shapes_val            # + AP and agreement with fp32
    python tools/benchmark.py --quick                          # seconds-long smoke run (tests)

Every contender sees the same BGR image (--image, or a seeded synthetic one) at the same network
input size and runs in eval mode under inference_mode / no_grad:

* yolact_d2: `yolact_d2.Predictor` (batch norms folded, channels_last) end to end, numpy image in,
  Instances with full-size masks out; also per stage: preprocess (resize + normalise), bottom-up
  backbone, FPN, protonet + head (+ priors), Fast NMS (softmax, decode, confidence filter, NMS),
  mask assembly (coefficients x prototypes, crop, upsampling to the image, threshold, boxes).
* "yolact_d2 (no optimize)": the model exactly as configured (--no-plain to skip).
* Mask R-CNN R50-FPN: Detectron2's model-zoo LazyConfig common/models/mask_rcnn_fpn.py, random
  (seeded) weights, given the image already resized to the YOLACT input size (its masks are pasted
  at the original size); --no-maskrcnn to skip.
* official YOLACT (dbolya/yolact), when --official-root points at a checkout: FastBaseTransform,
  Yolact forward (Fast NMS), postprocess with crop at the image size, as its eval.py does.

With a YolactEdge video config (configs/yolact_edge/yolact_edge_vid_*.py) the run is batch 1 and
times keyframes and non-keyframes stage by stage (partial backbone, flow, warp, the rest), the
mean per frame at --keyframe-interval, and our YOLACT on the same backbone and weights, round robin
(see yolact_d2/tools/benchmark_edge.py):

    python tools/benchmark.py --config configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py --iters 7

Precisions: every CPU precision of --precisions (fp32, bf16, int8) is timed in the same rounds,
our fp32 Predictor always among them (the base of "yolact_d2 / this"); with --official-root each
contender's time is also given as a fraction of the official fp32 code's ("this / official"), and
per-stage times for each precision (int8: preprocess, the ONNX Runtime network, Fast NMS, mask
assembly). fp16 (CUDA) is a run of its own, every contender under autocast.

Accuracy (--eval-dataset NAME, a registered dataset): each precision's Predictor (the very objects
timed) runs every image; Detectron2's COCOEvaluator gives box / mask AP, and each precision's
detections are matched to fp32's (same class, box IoU >= --match-iou, greedy by fp32 score):
matched count, fp32 / this-precision detections left without a twin, mean / min mask IoU, max /
mean |score difference|. Printed as a table and written to --json under "eval".

Timing: --warmup runs, then --iters rounds; in each round every contender runs once in turn,
starting one further along each round (so a busy machine slows all of them alike); the median
and the p25-p75 spread are reported, and the best round (min) too, the steadier figure on a
machine shared with other jobs. torch.set_num_threads is pinned to
--threads and printed. The table gives ms per batch, ms per image, images/s and each contender's
time relative to yolact_d2. --json writes all numbers.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

DEFAULT_CONFIG = "yolact/yolact_R_50_FPN_550.py"  # model-zoo name: the checkout's configs/ or the installed copy
MASK_RCNN_CONFIG = "common/models/mask_rcnn_fpn.py"
STAGES = ("preprocess", "backbone", "fpn", "protonet_head", "fast_nms", "mask_assembly")


# ---------------------------------------------------------------------------------- helpers
def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A seeded BGR image with smooth shapes (not pure noise, so features look natural-ish)."""
    import cv2

    rng = np.random.RandomState(seed)
    img = np.full((height, width, 3), 127, np.uint8)
    img[:] = rng.randint(60, 200, size=3)
    for _ in range(12):
        color = tuple(int(c) for c in rng.randint(0, 255, size=3))
        cx, cy = int(rng.randint(0, width)), int(rng.randint(0, height))
        r = int(rng.randint(min(height, width) // 16, min(height, width) // 4))
        if rng.rand() < 0.5:
            cv2.circle(img, (cx, cy), r, color, -1)
        else:
            cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r // 2), color, -1)
    noise = rng.randint(-10, 10, size=img.shape)
    return np.clip(img.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Round-robin timing of named callables: median of `iters` rounds after `warmup`.

    Records wall time and this process's CPU time (all threads). On a machine shared with other
    jobs the wall time includes waiting for a core; the CPU time does not, so its ratios are the
    steadier comparison there (both are reported).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.samples: Dict[str, List[float]] = {}
        self.cpu_samples: Dict[str, List[float]] = {}

    def once(self, name: str, fn: Callable[[], object]) -> object:
        _sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn()
        _sync(self.device)
        self.samples.setdefault(name, []).append(time.perf_counter() - start)
        self.cpu_samples.setdefault(name, []).append(time.process_time() - cpu_start)
        return out

    def clear(self) -> None:
        self.samples.clear()
        self.cpu_samples.clear()

    def median_ms(self, name: str) -> float:
        return 1000.0 * statistics.median(self.samples[name])

    def median_cpu_ms(self, name: str) -> float:
        return 1000.0 * statistics.median(self.cpu_samples[name])

    def min_ms(self, name: str) -> float:
        return 1000.0 * min(self.samples[name])

    def quartiles_ms(self, name: str) -> List[float]:
        """[p25, p75] of the rounds (the spread next to the median; both = the sample for one round)."""
        samples = self.samples[name]
        if len(samples) < 2:
            return [1000.0 * samples[0]] * 2
        q = statistics.quantiles(samples, n=4, method="inclusive")
        return [1000.0 * q[0], 1000.0 * q[2]]


# ---------------------------------------------------------------------------------- ours
class _Cached(torch.nn.Module):
    """Stands in for the bottom-up backbone so the FPN alone can be timed."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def forward(self, x):
        return self.feats


class YolactStages:
    """Runs a Yolact model stage by stage (same maths as Yolact.inference) to time each stage."""

    def __init__(self, model, inputs: List[Dict]):
        self.model = model
        self.inputs = inputs
        self.cache: Dict[str, object] = {}

    def preprocess(self):
        self.cache["images"] = self.model.preprocess_image(self.inputs, resize=True)

    def backbone(self):
        self.cache["bottom_up"] = self.model.backbone.bottom_up(self.cache["images"].tensor)

    def fpn(self):
        fpn = self.model.backbone
        real = fpn.bottom_up
        fpn.bottom_up = _Cached(self.cache["bottom_up"])
        try:
            self.cache["feats"] = fpn(self.cache["images"].tensor)
        finally:
            fpn.bottom_up = real

    def protonet_head(self):
        m, feats = self.model, self.cache["feats"]
        proto = m.protonet(feats[m.proto_feature]).permute(0, 2, 3, 1).contiguous()
        levels = [feats[f] for f in m.head_features]
        preds = dict(m.head(levels))
        preds["proto"] = proto
        image_size = tuple(self.cache["images"].tensor.shape[-2:])
        priors = m.prior_generator([tuple(f.shape[-2:]) for f in levels], image_size, proto.device)
        self.cache["preds"], self.cache["priors"] = preds, priors

    def fast_nms(self):
        from yolact_d2.modeling.inference import decode_boxes

        preds = self.cache["preds"]
        conf = torch.softmax(preds["conf"], dim=-1)
        boxes = decode_boxes(preds["loc"], self.cache["priors"])
        pp = self.model.post_processor
        self.cache["dets"] = [pp.detect(boxes[i], conf[i], preds["coef"][i]) for i in range(conf.shape[0])]

    def mask_assembly(self):
        m, images, preds = self.model, self.cache["images"], self.cache["preds"]
        pp = m.post_processor
        results = []
        for i, d in enumerate(self.inputs):
            dets = self.cache["dets"][i]
            pp.detect = lambda *a, _d=dets: _d  # reuse the timed NMS result
            try:
                results.append(
                    pp(
                        None, None, None, preds["proto"][i],
                        valid_size=images.image_sizes[i],
                        input_size=tuple(images.tensor.shape[-2:]),
                        output_size=(d["height"], d["width"]),
                        mask_rescoring=m.mask_rescoring,
                    )
                )
            finally:
                del pp.detect
        self.cache["results"] = results


INT8_STAGES = ("preprocess", "network", "fast_nms", "mask_assembly")


class Int8Stages(YolactStages):
    """The int8 Predictor stage by stage: the network is one ONNX Runtime run (backbone to head);
    preprocessing, Fast NMS and mask assembly are the model's own PyTorch code, as in `Int8Stages.runner`."""

    def __init__(self, runner, inputs: List[Dict]):
        super().__init__(runner.model, inputs)
        self.runner = runner  # deploy.network_graph.OnnxNetworkYolact

    def network(self):
        preds = self.runner.network(self.cache["images"].tensor)
        self.cache["preds"], self.cache["priors"] = preds, self.runner.priors


def stages_of(predictor, inputs: List[Dict]):
    """(stage runner, stage names) of a Predictor at its precision."""
    runner = getattr(predictor, "_int8", None)
    if runner is not None:
        return Int8Stages(runner, inputs), INT8_STAGES
    return YolactStages(predictor.model, inputs), STAGES


def build_ours(config: str, weights: Optional[str], device: str, opts: List[str], optimize: bool, precision: str,
               seed: int, calibration: Optional[str] = None, int8_parts: Optional[List[str]] = None,
               fast_path: bool = False):
    from yolact_d2 import Predictor

    torch.manual_seed(seed)  # the random initialisation when no weights are given
    extra = dict(calibration=calibration, int8_parts=int8_parts) if precision == "int8" else {}
    # fast_path explicit: "yolact_d2" is the eager path on every device (the fast path is its own contender)
    return Predictor(config, weights, device=device, opts=opts, optimize=optimize, precision=precision,
                     fast_path=fast_path, **extra)


# ---------------------------------------------------------------------------------- peers
def build_mask_rcnn(device: str, seed: int):
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    cfg = model_zoo.get_config(MASK_RCNN_CONFIG)
    torch.manual_seed(seed)
    model = instantiate(cfg.model).to(device).eval()
    return model


@contextlib.contextmanager
def _cpu_only_official_imports():
    """Stock dbolya/yolact calls torch.cuda.current_device() at import and .cuda() when building
    FastBaseTransform; on a CPU-only machine both are made harmless for the duration of the import."""
    if torch.cuda.is_available():
        yield
        return
    saved_current, saved_cuda = torch.cuda.current_device, torch.Tensor.cuda
    torch.cuda.current_device = lambda: 0
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.cuda.current_device, torch.Tensor.cuda = saved_current, saved_cuda


def build_official(root: str, config_name: str, weights: Optional[str], device: str, seed: int):
    """The official YOLACT from a checkout at `root` -> callable(list of BGR images) -> detections."""
    if not os.path.isfile(os.path.join(root, "yolact.py")):
        raise FileNotFoundError(f"--official-root '{root}' has no yolact.py; point it at a dbolya/yolact checkout.")
    if root not in sys.path:
        sys.path.insert(0, root)
    with _cpu_only_official_imports():
        from data.config import cfg, set_cfg  # noqa: F401  (official global config)

        set_cfg(config_name if config_name.endswith("_config") else config_name + "_config")
        cfg.mask_proto_debug = False  # set by the official eval.py before it evaluates
        import yolact as official_yolact
        from layers.output_utils import postprocess
        from utils.augmentations import FastBaseTransform

        torch.manual_seed(seed)
        net = official_yolact.Yolact()
        if weights:
            net.load_weights(weights)  # else: the constructor's (seeded) random initialisation
        net = net.to(device)
        net.eval()  # the official train() override returns None: no chaining
        net.detect.use_fast_nms = True
        net.detect.use_cross_class_nms = False
        transform = FastBaseTransform()
    transform.mean, transform.std = transform.mean.to(device), transform.std.to(device)

    def run(images: List[np.ndarray]):
        frames = torch.stack([torch.from_numpy(img).to(device).float() for img in images])
        preds = net(transform(frames))
        h, w = images[0].shape[:2]
        return [postprocess(preds, w, h, batch_idx=i, crop_masks=True, score_threshold=0) for i in range(len(images))]

    return run


# ---------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="yolact_d2 LazyConfig file or model-zoo name")
    p.add_argument("--weights", default=None, help="yolact_d2 or official checkpoint (default: seeded random init)")
    p.add_argument("--opts", nargs="*", default=[], help="LazyConfig overrides key=value")
    p.add_argument("--image", default=None, help="BGR image file (default: a seeded synthetic image)")
    p.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precisions", "--dtypes", dest="precisions", nargs="+", default=["fp32"],
                   choices=["fp32", "bf16", "fp16", "int8"],
                   help="yolact_d2 precisions to time (yolact_d2.deploy.precision; fp16: CUDA only; bf16: "
                        "AVX512-BF16/AMX CPU or CUDA); a CPU run other than fp32 also times our fp32 beside it")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPU cores)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5, help="timed rounds; the median is reported")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage timing")
    p.add_argument("--no-plain", action="store_true", help="skip the un-optimised yolact_d2 model")
    p.add_argument("--fast-path", action="store_true",
                   help="also time the real-time path (yolact_d2.deploy.realtime: CUDA graphs on CUDA) as "
                        "'yolact_d2 fast path', same precision, end to end (host uint8 in, Instances out)")
    p.add_argument("--no-maskrcnn", action="store_true")
    p.add_argument("--calibration", default=None,
                   help="int8: folder of images to calibrate on (default: 100 images of the config's training set)")
    p.add_argument("--int8-parts", nargs="+", default=None, metavar="PART",
                   help="int8: parts whose convs go int8 (backbone fpn protonet head; default: "
                        "yolact_d2.deploy.quantize.DEFAULT_INT8_PARTS)")
    p.add_argument("--eval-dataset", default=None, metavar="NAME",
                   help="also report each precision's box/mask AP on this registered dataset and its agreement "
                        "with fp32 (matched detections' mask IoU, score differences, unmatched counts)")
    p.add_argument("--eval-max-images", type=int, default=None, metavar="N", help="--eval-dataset: the first N images")
    p.add_argument("--match-iou", type=float, default=0.5,
                   help="--eval-dataset: box IoU at which a detection of the same class is fp32's twin")
    p.add_argument("--official-root", default=None, help="dbolya/yolact checkout to time as well")
    p.add_argument("--official-config", default="yolact_resnet50", help="official config name")
    p.add_argument("--official-weights", default=None, help="official .pth (default: its random init)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--keyframe-interval", type=int, default=5,
                   help="YolactEdge video configs: report the mean per frame at this keyframe interval")
    p.add_argument("--yolact-config", nargs="+", default=[], metavar="CONFIG",
                   help="YolactEdge video configs: also time these YOLACT configs (seeded weights, same --opts)")
    p.add_argument("--schedule-study", type=int, default=0, metavar="FRAMES",
                   help="YolactEdge video configs: compare the fixed interval with adaptive keyframes on a "
                        "panning sequence of this many frames (agreement with the full network on every frame)")
    p.add_argument("--study-motion", type=float, nargs="*", default=[2.0, 4.0, 8.0], metavar="PX")
    p.add_argument("--study-residual", type=float, nargs="*", default=[], metavar="R")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 192x192 network input, 96x128 image, batch 1, 1 round, no warm-up")
    args = p.parse_args(argv)
    if args.quick:
        args.opts = list(args.opts) + ["model.input_size=192"]
        args.image_size = (96, 128)
        args.batch_sizes = [1]
        args.warmup, args.iters = 0, 1
        args.official_root = None  # the official code's sizes come from its global config
    if "fp16" in args.precisions and not args.device.startswith("cuda"):
        p.error("fp16 needs --device cuda")
    if "int8" in args.precisions and not args.weights:
        p.error("--precisions int8 needs --weights: the calibrated int8 model is cached next to the weights file")
    if args.eval_dataset and "fp16" in args.precisions:
        p.error("--eval-dataset compares CPU precisions with fp32; leave fp16 out")
    from yolact_d2.deploy.precision import PrecisionError, check_precision

    for precision in args.precisions:  # before anything is built: name what the machine lacks
        try:
            check_precision(precision, args.device)
        except PrecisionError as e:
            p.error(f"--precisions {precision}: {e}")
    return args


def run_benchmark(args) -> Dict:
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    if args.image:
        import cv2

        image = cv2.imread(args.image)
        if image is None:
            raise SystemExit(f"benchmark: cannot read image '{args.image}'")
    else:
        image = synthetic_image(*args.image_size, seed=args.seed)
    height, width = image.shape[:2]
    load_before = os.getloadavg()

    from yolact_d2.layers import backend_info

    results: Dict = {
        "config": os.path.relpath(args.config, REPO) if os.path.isabs(args.config) else args.config,
        "weights": args.weights or f"random (seed {args.seed})",
        "opts": args.opts,
        "image": args.image or f"synthetic {height}x{width}",
        "image_size": [height, width],
        "device": str(device),
        "threads": threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "num_cpus": os.cpu_count(),
        "warmup": args.warmup,
        "iters": args.iters,
        "ops_backend": backend_info(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "runs": [],
    }
    print(f"torch {torch.__version__}, torch.set_num_threads({threads}), device {device}, "
          f"image {height}x{width}, warmup {args.warmup}, median of {args.iters}, load {load_before[0]:.1f}")

    for dtype in args.precisions:
        ours = _build_precision(args, dtype)
        if not getattr(ours.model, "is_video_model", False):  # image models: every precision in one run
            built = {dtype: ours}
            for group in precision_groups(args.precisions):
                for run in run_image_group(args, group, image, built):
                    results["runs"].append(run)
                    print_run(run)
            if args.eval_dataset:
                results["eval"] = evaluate_precisions(built, args.eval_dataset, args.eval_max_images, args.match_iou)
                print_eval(results["eval"])
            break
        from yolact_d2.tools.benchmark_edge import print_edge_run, run_edge  # YolactEdge: keyframes vs warped frames (batch 1)

        if args.schedule_study:
            from yolact_d2.tools.benchmark_edge import print_study, schedule_study

            results["schedule_study"] = schedule_study(args, ours, args.schedule_study)
            print_study(results["schedule_study"])
            break
        run = run_edge(args, ours, image, dtype == "fp16")  # every precision of --precisions in its rounds
        results["runs"].append(run)
        print_edge_run(run)
        break
    results["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    return results


def _build_precision(args, precision: str, optimize: bool = True):
    return build_ours(args.config, args.weights, args.device, args.opts, optimize, precision, args.seed,
                      args.calibration, args.int8_parts)


def precision_groups(precisions: List[str]) -> List[List[str]]:
    """Precisions timed in the same rounds: all but fp16 together, our fp32 always among them (the
    base of every ratio); fp16 alone (it runs every contender under CUDA autocast)."""
    groups = []
    others = [p for p in precisions if p != "fp16"]
    if others:
        groups.append(["fp32"] + [p for p in dict.fromkeys(others) if p != "fp32"])
    if "fp16" in precisions:
        groups.append(["fp16"])
    return groups


def contender_name(precision: str, base: str) -> str:
    return "yolact_d2" if precision == base else f"yolact_d2 {precision}"


def run_image_group(args, group: List[str], image: np.ndarray, built: Dict) -> List[Dict]:
    """One run per batch size: our Predictor at each precision of `group`, the peers, round robin.

    Each round runs every contender once, starting one further along the list each round, so no
    contender always follows the same one (caches, turbo) on a shared machine."""
    device = torch.device(args.device)
    height, width = image.shape[:2]
    base = group[0]
    for p in group:  # `built` keeps them: --eval-dataset evaluates these same Predictors
        if p not in built:
            built[p] = _build_precision(args, p)
    ours = {p: built[p] for p in group}
    input_size = ours[base].model.input_size
    plain = None if args.no_plain else _build_precision(args, base, optimize=False)
    fast = {}  # --fast-path: the real-time path of each precision (deploy/realtime.py), int8 has none
    if getattr(args, "fast_path", False):
        fast = {p: build_ours(args.config, args.weights, args.device, args.opts, True, p, args.seed, fast_path=True)
                for p in group if p != "int8"}
    mask_rcnn = None if args.no_maskrcnn else build_mask_rcnn(args.device, args.seed)
    official = None
    if args.official_root:
        official = build_official(args.official_root, args.official_config, args.official_weights, args.device, args.seed)
    fp16 = base == "fp16"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if fp16 else contextlib.nullcontext
    runs = []
    for batch in args.batch_sizes:
        images = [image] * batch
        import cv2

        resized = cv2.resize(image, (input_size, input_size), interpolation=cv2.INTER_LINEAR)
        rcnn_inputs = [
            {"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()).to(device), "height": height, "width": width}
            for _ in range(batch)
        ]
        contenders: Dict[str, Callable] = {}
        for precision, predictor in ours.items():
            contenders[contender_name(precision, base)] = lambda p=predictor: p(images)
        if plain is not None:
            contenders["yolact_d2 (no optimize)"] = lambda: plain(images)
        for precision, predictor in fast.items():
            contenders[contender_name(precision, base).replace("yolact_d2", "yolact_d2 fast path")] = (
                lambda p=predictor: p(images))
        if official is not None:
            contenders["official YOLACT"] = lambda: official(images)
        if mask_rcnn is not None:
            contenders["Mask R-CNN R50-FPN"] = lambda: mask_rcnn(rcnn_inputs)
        stage_runners = {}
        if not args.no_stages:
            for precision, predictor in ours.items():
                stage_runners[precision] = stages_of(predictor, [predictor._to_input(img) for img in images])

        timer = Timer(device)
        counts: Dict[str, int] = {}
        names = list(contenders)
        for it in range(args.warmup + args.iters):
            with torch.inference_mode(), autocast():
                for k in range(len(names)):
                    name = names[(it + k) % len(names)]
                    counts[name] = _num_detections(timer.once(name, contenders[name]))
                for precision, (runner, stages) in stage_runners.items():
                    for stage in stages:
                        timer.once(f"stage:{precision}:{stage}", getattr(runner, stage))
                    counts["stages:" + precision] = len(runner.cache["results"][0])
            if it < args.warmup:
                timer.clear()
        run = {"dtype": "+".join(group), "precisions": list(group), "batch": batch, "contenders": {},
               "stages_ms": {}, "stages_cpu_ms": {}, "stages_by_precision": {}}
        ref = {"": timer.median_ms("yolact_d2"), "_min": timer.min_ms("yolact_d2"), "_cpu": timer.median_cpu_ms("yolact_d2")}
        off = None
        if official is not None:
            off = {"": timer.median_ms("official YOLACT"), "_min": timer.min_ms("official YOLACT"),
                   "_cpu": timer.median_cpu_ms("official YOLACT")}
        for name in contenders:
            ms, cpu_ms, min_ms = timer.median_ms(name), timer.median_cpu_ms(name), timer.min_ms(name)
            mine = {"": ms, "_min": min_ms, "_cpu": cpu_ms}
            r = {
                "ms": round(ms, 2),
                "ms_per_image": round(ms / batch, 2),
                "images_per_s": round(1000.0 * batch / ms, 3),
                "quartiles_ms": [round(v, 2) for v in timer.quartiles_ms(name)],
                "min_ms": round(min_ms, 2),
                "cpu_ms": round(cpu_ms, 2),
                "samples_ms": [round(1000 * v, 2) for v in timer.samples[name]],
                "cpu_samples_ms": [round(1000 * v, 2) for v in timer.cpu_samples[name]],
                "detections_first_image": counts[name],
            }
            for kind in ("", "_min", "_cpu"):
                r["yolact_d2_over_this" + kind] = round(ref[kind] / mine[kind], 4)
                if off is not None:  # the targets: our precisions' time as a fraction of the official fp32 code's
                    r["this_over_official" + kind] = round(mine[kind] / off[kind], 4)
            if off is not None:  # median of the per-round quotients: each pair ran in the same round, so
                # a burst of load on a shared machine slows both sides of a quotient alike
                pairs = zip(timer.samples[name], timer.samples["official YOLACT"])
                r["this_over_official_paired"] = round(statistics.median(a / b for a, b in pairs), 4)
            run["contenders"][name] = r
        for precision, (runner, stages) in stage_runners.items():
            wall = {s: round(timer.median_ms(f"stage:{precision}:{s}"), 2) for s in stages}
            cpu = {s: round(timer.median_cpu_ms(f"stage:{precision}:{s}"), 2) for s in stages}
            wall["sum"], cpu["sum"] = round(sum(wall.values()), 2), round(sum(cpu.values()), 2)
            run["stages_by_precision"][precision] = {"ms": wall, "cpu_ms": cpu,
                                                     "detections_first_image": counts["stages:" + precision]}
            if precision == base:
                run["stages_ms"], run["stages_cpu_ms"] = wall, cpu
                run["stage_detections_first_image"] = counts["stages:" + precision]
        runs.append(run)
    return runs


# ---------------------------------------------------------------------------------- accuracy
def match_detections(inst, ref, iou_threshold: float = 0.5) -> List[tuple]:
    """Twins of `ref`'s detections in `inst`: (ref index, inst index) pairs. Greedy in `ref`'s
    score order (its rows are sorted), each takes the unmatched `inst` detection of the same class
    with the highest box IoU, if >= iou_threshold (COCO's own greedy matching, boxes against boxes)."""
    from detectron2.structures import pairwise_iou

    if len(ref) == 0 or len(inst) == 0:
        return []
    iou = pairwise_iou(ref.pred_boxes, inst.pred_boxes)  # (R, I)
    iou[ref.pred_classes[:, None] != inst.pred_classes[None, :]] = -1.0
    taken = torch.zeros(len(inst), dtype=torch.bool)
    pairs = []
    for i in torch.argsort(ref.scores, descending=True, stable=True).tolist():
        row = iou[i].masked_fill(taken, -1.0)
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            taken[j] = True
            pairs.append((i, j))
    return pairs


class Agreement:
    """Running agreement of one precision's detections with fp32's, over images: matched pairs'
    mask IoU and |score difference|, and the detections on either side left without a twin."""

    def __init__(self, iou_threshold: float = 0.5):
        self.iou_threshold = iou_threshold
        self.mask_ious: List[float] = []
        self.score_diffs: List[float] = []
        self.unmatched_ref = self.unmatched_this = self.ref_total = 0

    def add(self, inst, ref) -> None:
        pairs = match_detections(inst, ref, self.iou_threshold)
        self.ref_total += len(ref)
        self.unmatched_ref += len(ref) - len(pairs)
        self.unmatched_this += len(inst) - len(pairs)
        for i, j in pairs:
            a, b = ref.pred_masks[i], inst.pred_masks[j]
            union = int((a | b).sum())
            self.mask_ious.append(1.0 if union == 0 else int((a & b).sum()) / union)
            self.score_diffs.append(abs(float(ref.scores[i]) - float(inst.scores[j])))

    def summary(self) -> Dict:
        n = len(self.mask_ious)
        return {
            "fp32_detections": self.ref_total,
            "matched": n,
            "unmatched_fp32": self.unmatched_ref,
            "unmatched_this": self.unmatched_this,
            "mask_iou_mean": round(statistics.fmean(self.mask_ious), 6) if n else None,
            "mask_iou_min": round(min(self.mask_ious), 6) if n else None,
            "score_diff_max": round(max(self.score_diffs), 8) if n else None,
            "score_diff_mean": round(statistics.fmean(self.score_diffs), 8) if n else None,
            "match_box_iou": self.iou_threshold,
        }


def evaluate_precisions(predictors: Dict, dataset: str, max_images: Optional[int] = None,
                        match_iou: float = 0.5) -> Dict:
    """Box / mask AP of each Predictor in `predictors` ({precision: Predictor}, fp32 among them) on
    the registered `dataset` (Detectron2's COCOEvaluator; YOLACT++'s mask scores through
    YolactCOCOEvaluator), and each one's agreement with fp32 on the same images. Every image is
    read once (BGR, cv2) and given to every Predictor: what the timing runs, on real data."""
    import tempfile

    import cv2
    from detectron2.data import DatasetCatalog

    from yolact_d2.evaluation import YolactCOCOEvaluator

    if dataset not in DatasetCatalog.list():
        close = [n for n in DatasetCatalog.list() if dataset.split("_")[0] in n][:8]
        raise SystemExit(
            f"benchmark: --eval-dataset '{dataset}' is not a registered dataset (registered: {close or 'none alike'}); "
            "datasets register when their config is loaded (e.g. --config configs/shapes/yolact_shapes.py "
            "registers shapes_val) or through detectron2.data.datasets.register_coco_instances."
        )
    if "fp32" not in predictors:
        raise ValueError("evaluate_precisions: the fp32 Predictor is the reference and must be given.")
    records = DatasetCatalog.get(dataset)[: max_images or None]
    if not records:
        raise SystemExit(f"benchmark: --eval-dataset '{dataset}' has no images.")
    with tempfile.TemporaryDirectory(prefix="yolact_bench_eval_") as tmp:
        evaluators = {}
        for precision in predictors:
            evaluators[precision] = YolactCOCOEvaluator(
                dataset, tasks=("bbox", "segm"), distributed=False, output_dir=os.path.join(tmp, precision),
                use_fast_impl=False,  # the fast COCOeval needs Detectron2's compiled _C
            )
            evaluators[precision].reset()
        agreement = {p: Agreement(match_iou) for p in predictors if p != "fp32"}
        for record in records:
            image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
            if image is None:
                raise SystemExit(f"benchmark: --eval-dataset '{dataset}': cv2 cannot read '{record['file_name']}'.")
            inputs = [{k: record[k] for k in ("image_id", "file_name", "height", "width") if k in record}]
            outputs = {p: predictor(image).to("cpu") for p, predictor in predictors.items()}
            for precision, instances in outputs.items():
                evaluators[precision].process(inputs, [{"instances": instances}])
                if precision in agreement:
                    agreement[precision].add(instances, outputs["fp32"])
        result = {"dataset": dataset, "images": len(records), "precisions": {}}
        for precision, evaluator in evaluators.items():
            metrics = {task: dict(values) for task, values in evaluator.evaluate().items()}
            if precision in agreement:
                metrics["agreement_with_fp32"] = agreement[precision].summary()
            result["precisions"][precision] = metrics
    return result


def print_eval(result: Dict) -> None:
    from tabulate import tabulate

    ref = result["precisions"]["fp32"]
    rows = []
    for precision, m in result["precisions"].items():
        a = m.get("agreement_with_fp32", {})
        rows.append([precision, round(m["bbox"]["AP"], 3), round(m["segm"]["AP"], 3),
                     round(m["bbox"]["AP"] - ref["bbox"]["AP"], 3), round(m["segm"]["AP"] - ref["segm"]["AP"], 3),
                     a.get("matched", "-"), a.get("unmatched_fp32", "-"), a.get("unmatched_this", "-"),
                     a.get("mask_iou_mean", "-"), a.get("mask_iou_min", "-"),
                     a.get("score_diff_max", "-"), a.get("score_diff_mean", "-")])
    print(f"\naccuracy on {result['dataset']} ({result['images']} images), agreement with fp32 "
          "(detections matched by class and box IoU):")
    print(tabulate(rows, headers=["precision", "box AP", "mask AP", "box AP - fp32", "mask AP - fp32", "matched",
                                  "unmatched fp32", "unmatched this", "mask IoU mean", "mask IoU min",
                                  "max |score diff|", "mean |score diff|"], tablefmt="github"))


def _num_detections(out) -> int:
    """Detections of the first image, whatever the contender returns."""
    first = out[0] if isinstance(out, list) else out
    if isinstance(first, dict):  # Detectron2 models
        first = first["instances"]
    if isinstance(first, (list, tuple)):  # official postprocess: [classes, scores, boxes, masks]
        return int(first[0].shape[0]) if first[0] is not None else 0
    return len(first)


def print_run(run: Dict) -> None:
    from tabulate import tabulate

    rows = []
    official = any("this_over_official" in r for r in run["contenders"].values())
    for name, r in run["contenders"].items():
        row = [name, r["ms"], "{:.0f}-{:.0f}".format(*r["quartiles_ms"]), r["ms_per_image"], r["images_per_s"],
               f"{r['yolact_d2_over_this']:.3f}x", r["min_ms"], f"{r['yolact_d2_over_this_min']:.3f}x",
               r["cpu_ms"], f"{r['yolact_d2_over_this_cpu']:.3f}x"]
        if official:
            row += [f"{r['this_over_official']:.3f}", f"{r['this_over_official_paired']:.3f}",
                    f"{r['this_over_official_min']:.3f}", f"{r['this_over_official_cpu']:.3f}"]
        rows.append(row + [r["detections_first_image"]])
    headers = ["model", "median ms/batch", "p25-p75", "ms/image", "images/s", "yolact_d2 / this", "best ms/batch",
               "yolact_d2 / this (best)", "CPU ms/batch", "yolact_d2 / this (CPU)"]
    if official:
        headers += ["this / official", "same-round median", "this / official (best)", "this / official (CPU)"]
    print(f"\n{run['dtype']}, batch {run['batch']} (medians):")
    print(tabulate(rows, headers=headers + ["dets"], tablefmt="github"))
    for precision, st in run.get("stages_by_precision", {}).items():
        srows = [[s, v, st["cpu_ms"][s]] for s, v in st["ms"].items()]
        print(tabulate(srows, headers=[f"yolact_d2 {precision} stage", "wall ms/batch", "CPU ms/batch"], tablefmt="github"))


def main(argv=None) -> int:
    from yolact_d2.model_zoo import resolve_config_file

    args = parse_args(argv)
    args.config = resolve_config_file(args.config)
    args.yolact_config = [resolve_config_file(c) for c in args.yolact_config]
    results = run_benchmark(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
