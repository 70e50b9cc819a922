"""YOLACT inference latency: per stage and end to end, against Mask R-CNN and the official code.

    python tools/benchmark.py                                  # R50-550, batch 1 and 8, CPU fp32
    python tools/benchmark.py --official-root /path/to/dbolya/yolact \\
        --official-weights yolact_resnet50_54_800000.pth --weights yolact_R_50_FPN_550.pth
    python tools/benchmark.py --device cuda --precisions fp32 fp16 --json out.json
    python tools/benchmark.py --precisions fp32 bf16 --batch-sizes 1  # CPU bf16, timed next to our fp32
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

Timing: --warmup runs, then --iters rounds; in each round every contender runs once in turn (so a
busy machine slows all of them alike); the median is reported, and the best round (min) too, the
steadier figure on a machine shared with other jobs. torch.set_num_threads is pinned to
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


def build_ours(config: str, weights: Optional[str], device: str, opts: List[str], optimize: bool, precision: str, seed: int):
    from yolact_d2 import Predictor

    torch.manual_seed(seed)  # the random initialisation when no weights are given
    return Predictor(config, weights, device=device, opts=opts, optimize=optimize, precision=precision)


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
    p.add_argument("--no-maskrcnn", action="store_true")
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
        fp16 = dtype == "fp16"
        ours = build_ours(args.config, args.weights, args.device, args.opts, True, dtype, args.seed)
        if getattr(ours.model, "is_video_model", False):  # YolactEdge: keyframes vs warped frames (batch 1)
            from yolact_d2.tools.benchmark_edge import print_edge_run, run_edge

            if args.schedule_study:
                from yolact_d2.tools.benchmark_edge import print_study, schedule_study

                results["schedule_study"] = schedule_study(args, ours, args.schedule_study)
                print_study(results["schedule_study"])
                break
            run = run_edge(args, ours, image, fp16)
            run["dtype"] = dtype
            results["runs"].append(run)
            print_edge_run(run)
            continue
        input_size = ours.model.input_size
        contenders: Dict[str, Callable] = {}
        plain = None
        if not args.no_plain:
            plain = build_ours(args.config, args.weights, args.device, args.opts, False, dtype, args.seed)
        # bf16 / int8: our fp32 Predictor in the same rounds, so "yolact_d2 / this" is the speed-up
        # (fp16 runs every contender under autocast, so it has no fp32 twin).
        ours_fp32 = None
        if dtype not in ("fp32", "fp16"):
            ours_fp32 = build_ours(args.config, args.weights, args.device, args.opts, True, "fp32", args.seed)
        mask_rcnn = None if args.no_maskrcnn else build_mask_rcnn(args.device, args.seed)
        official = None
        if args.official_root:
            official = build_official(args.official_root, args.official_config, args.official_weights, args.device, args.seed)
        autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if fp16 else contextlib.nullcontext

        for batch in args.batch_sizes:
            images = [image] * batch
            import cv2

            resized = cv2.resize(image, (input_size, input_size), interpolation=cv2.INTER_LINEAR)
            rcnn_inputs = [
                {"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()).to(device), "height": height, "width": width}
                for _ in range(batch)
            ]
            contenders = {"yolact_d2": lambda: ours(images)}
            if ours_fp32 is not None:
                contenders["yolact_d2 fp32"] = lambda: ours_fp32(images)
            if plain is not None:
                contenders["yolact_d2 (no optimize)"] = lambda: plain(images)
            if official is not None:
                contenders["official YOLACT"] = lambda: official(images)
            if mask_rcnn is not None:
                contenders["Mask R-CNN R50-FPN"] = lambda: mask_rcnn(rcnn_inputs)
            stage_runner = None
            if not args.no_stages:
                stage_runner = YolactStages(ours.model, [ours._to_input(img) for img in images])

            timer = Timer(device)
            counts: Dict[str, int] = {}
            for it in range(args.warmup + args.iters):
                with torch.inference_mode(), autocast():
                    for name, fn in contenders.items():
                        out = timer.once(name, fn)
                        counts[name] = _num_detections(out)
                    if stage_runner is not None:
                        for stage in STAGES:
                            timer.once("stage:" + stage, getattr(stage_runner, stage))
                        counts["stages"] = len(stage_runner.cache["results"][0])
                if it < args.warmup:
                    timer.clear()
            run = {"dtype": dtype, "batch": batch, "contenders": {}, "stages_ms": {}, "stages_cpu_ms": {}}
            base, base_cpu, base_min = timer.median_ms("yolact_d2"), timer.median_cpu_ms("yolact_d2"), timer.min_ms("yolact_d2")
            for name in contenders:
                ms, cpu_ms = timer.median_ms(name), timer.median_cpu_ms(name)
                run["contenders"][name] = {
                    "ms": round(ms, 2),
                    "ms_per_image": round(ms / batch, 2),
                    "images_per_s": round(1000.0 * batch / ms, 3),
                    "yolact_d2_over_this": round(base / ms, 4),
                    "min_ms": round(timer.min_ms(name), 2),
                    "yolact_d2_over_this_min": round(base_min / timer.min_ms(name), 4),
                    "cpu_ms": round(cpu_ms, 2),
                    "yolact_d2_over_this_cpu": round(base_cpu / cpu_ms, 4),
                    "samples_ms": [round(1000 * s, 2) for s in timer.samples[name]],
                    "cpu_samples_ms": [round(1000 * s, 2) for s in timer.cpu_samples[name]],
                    "detections_first_image": counts[name],
                }
            if stage_runner is not None:
                for stage in STAGES:
                    run["stages_ms"][stage] = round(timer.median_ms("stage:" + stage), 2)
                    run["stages_cpu_ms"][stage] = round(timer.median_cpu_ms("stage:" + stage), 2)
                run["stages_ms"]["sum"] = round(sum(run["stages_ms"][s] for s in STAGES), 2)
                run["stages_cpu_ms"]["sum"] = round(sum(run["stages_cpu_ms"][s] for s in STAGES), 2)
                run["stage_detections_first_image"] = counts["stages"]
            results["runs"].append(run)
            print_run(run)
    results["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    return results


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
    for name, r in run["contenders"].items():
        rows.append([name, r["ms"], r["ms_per_image"], r["images_per_s"], f"{r['yolact_d2_over_this']:.3f}x",
                     r["min_ms"], f"{r['yolact_d2_over_this_min']:.3f}x",
                     r["cpu_ms"], f"{r['yolact_d2_over_this_cpu']:.3f}x", r["detections_first_image"]])
    print(f"\n{run['dtype']}, batch {run['batch']} (medians):")
    print(tabulate(rows, headers=["model", "median ms/batch", "ms/image", "images/s", "yolact_d2 / this",
                                  "best ms/batch", "yolact_d2 / this (best)",
                                  "CPU ms/batch", "yolact_d2 / this (CPU)", "dets"], tablefmt="github"))
    if run["stages_ms"]:
        srows = [[s, v, run["stages_cpu_ms"][s]] for s, v in run["stages_ms"].items()]
        print(tabulate(srows, headers=["yolact_d2 stage", "wall ms/batch", "CPU ms/batch"], tablefmt="github"))


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
