"""One prepared command for a short-lived CUDA machine: install, build, check and measure.

Here (a machine with the package registry):
    python tools/gpu_check.py --make-wheelhouse wheelhouse      # cp312 wheels, < 20 MB

There (a fresh CUDA machine with Python 3.12, torch, torchvision, nvcc; no registry, no Detectron2):
    python tools/gpu_check.py --wheelhouse wheelhouse --output $OUT/gpu_check

Anywhere, on CPU (what CI runs, so the script cannot rot):
    python tools/gpu_check.py --dry-run --output out/gpu_check [--wheelhouse wheelhouse]

Steps, in order, each in its own subprocess (its own process group) with its own time box (a CUDA
crash or a hang ends only that step). A step starts only when the budget left (--budget-s, 480 s:
the whole check within 8 minutes) holds its expected time (STEP_SECONDS), else it is skipped with
the reason; the JSON is rewritten after every step, so a killed check still leaves what it measured:

  install         pip install --no-index --no-deps --target <output>/site wheelhouse/*.whl
  build_extension setup.py build_ext --inplace against the local torch; a CPU-only build is FAILED
  op_tests        pytest tests/test_ops.py tests/test_realtime.py -k cuda (kernels; CUDA-graph fast path)
  ops_compare     Fast NMS (19,248 priors x 80 classes) and crop (100 masks, 138x138 and 550x550):
                  device kernel vs the CPU kernel and the pure-PyTorch path, bit-exact
  inference       Predictor on the device vs on CPU, same seeded weights, per config: same
                  classes, score difference, mean mask IoU (VideoPredictor for YolactEdge video);
                  also the real-time fast path (CUDA graphs) fp32 and fp16 vs the CPU eager fp32:
                  scores within 1e-4 (fp32) / 1e-3 (fp16)
  train_amp       train_net.py on the tiny shapes set, AMP on (fp16, GradScaler), 50 iterations:
                  finite, decreasing; train_amp_bf16 the same with bf16 autocast (no scaler)
  ddp_nccl        train_net.py --num-gpus 2 (NCCL), when the machine has 2 GPUs
  benchmark:...   tools/benchmark.py --device cuda --fast-path (eager Predictor and the real-time
                  path, end to end: host uint8 frame in, Instances with full-size masks out; `fps`
                  sums a step's images/s). First the required figures: R50 and R101 (--benchmark-
                  configs) fp32 batch 1; then as time allows: their fp32 batch 8, their fp16 + bf16
                  batch 1 and 8, YOLACT++ R50 and YolactEdge R50 video (--more-benchmark-configs)
  onnx_runtimes   the first --benchmark-configs exported to ONNX (whole model) on ONNX Runtime's CUDA
                  and TensorRT providers (fp32, TensorRT fp16): detections vs the PyTorch CPU model,
                  batch-1 fps end to end; a provider the machine lacks or cannot load is skipped
  benchmark_ops   tools/benchmark_ops.py --device cuda (last)

--dry-run runs every step on CPU (device=cpu on both sides of each comparison, 3 training
iterations without AMP, one-round benchmarks at a 96x128 image and 192 input; the fp16 + bf16
benchmarks are skipped) and reports each CUDA call as skipped with the reason.
Results: <output>/gpu_check.json (one entry per step: status passed/failed/skipped, reason,
seconds, figures; `not_run_yet`: the planned steps not reached; `fps_batch1`: the benchmarks'
batch-1 images/s by config) and <output>/gpu_check.log (every subprocess's output). Exit status 0
when no step failed.
"""
import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

# ------------------------------------------------------------------------------- the wheelhouse
# What our stack needs beyond what the GPU machine has (python 3.12, torch, torchvision, numpy,
# Pillow, OpenCV, ONNX, ONNX Runtime, TensorBoard, matplotlib, SciPy, sympy). Versions are pinned
# to this environment's, the ones the suite passes with.
PURE_PACKAGES = (  # py3-none-any wheels: any platform
    "fvcore", "iopath", "omegaconf", "hydra-core", "antlr4-python3-runtime", "yacs", "tabulate",
    "termcolor", "cloudpickle", "portalocker", "tqdm", "packaging",
    "pytest", "iniconfig", "pluggy", "pygments", "onnxscript", "onnx-ir",
    "click", "mypy-extensions", "pathspec", "platformdirs",  # black's: Detectron2 requires it
)
BINARY_PACKAGES = ("pycocotools", "faster-coco-eval", "PyYAML", "ml_dtypes", "black", "pytokens")  # cp312 manylinux
GPU_MACHINE_HAS = (  # seen on the lent GPU machine; not carried
    "torch", "torchvision", "numpy", "Pillow", "opencv-python-headless", "onnx", "onnxruntime", "tensorboard",
    "matplotlib", "scipy", "sympy", "typing_extensions",
)
# Nothing left out: black (only LazyConfig.to_py pretty-prints with it) is carried, ~2.5 MB with
# its deps, so that a resolving `pip install --no-index --find-links wheelhouse detectron2` works too.
NOT_CARRIED: Dict[str, str] = {}
SDIST_ONLY = ("fvcore", "antlr4-python3-runtime")  # no wheel on the registry: built here
PLATFORM_ARGS = (
    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
)
WHEELHOUSE_LIMIT_MB = 20.0
DETECTRON2_WHEEL_GLOB = os.path.join(REPO, ".cache", "wheels", "detectron2-*.whl")


def pinned(names) -> List[str]:
    """NAME==VERSION from this environment; a package missing here is an error naming it."""
    from importlib import metadata

    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise SystemExit(f"gpu_check: '{name}' is not installed here; run scripts/setup_env.sh first.")
    return out


def download_commands(dest: str, pip: Tuple[str, ...] = (sys.executable, "-m", "pip")) -> List[List[str]]:
    """The pip commands that fill `dest` (no download happens here)."""
    cmds = []
    for spec in pinned(BINARY_PACKAGES):
        cmds.append([*pip, "download", "--no-deps", *PLATFORM_ARGS, "-d", dest, spec])
    for spec in pinned(PURE_PACKAGES):
        if spec.split("==")[0] in SDIST_ONLY:  # pure Python sdists: a py3-none-any wheel built here
            cmds.append([*pip, "wheel", "--no-deps", "-w", dest, spec])
        else:
            cmds.append([*pip, "download", "--no-deps", "--only-binary=:all:", "-d", dest, spec])
    return cmds


def wheel_tags_ok(filename: str) -> bool:
    """True for a wheel that installs on CPython 3.12 x86_64 Linux (cp312 manylinux or pure Python)."""
    parts = os.path.basename(filename)[: -len(".whl")].split("-")
    if len(parts) < 5:
        return False
    py, abi, plat = parts[-3:]
    pure = "py3" in py.split(".") and abi == "none" and plat == "any"
    cp312 = "cp312" in py.split(".") and abi in ("cp312", "abi3", "none") and "x86_64" in plat and "linux" in plat
    return pure or cp312


def make_wheelhouse(dest: str) -> int:
    os.makedirs(dest, exist_ok=True)
    d2 = sorted(glob.glob(DETECTRON2_WHEEL_GLOB), key=os.path.getmtime)
    if not d2:
        raise SystemExit(f"gpu_check: no Detectron2 wheel matches {DETECTRON2_WHEEL_GLOB}; run "
                         "scripts/setup_env.sh (it builds one with scripts/build_detectron2_wheel.py).")
    for old in glob.glob(os.path.join(dest, "detectron2-*.whl")):
        os.remove(old)
    shutil.copy2(d2[-1], dest)
    for cmd in download_commands(dest):
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    wheels = sorted(glob.glob(os.path.join(dest, "*.whl")))
    bad = [os.path.basename(w) for w in wheels if not wheel_tags_ok(w)]
    size_mb = sum(os.path.getsize(w) for w in wheels) / 2**20
    for w in wheels:
        print(f"{os.path.getsize(w) / 2**20:7.2f} MB  {os.path.basename(w)}")
    print(f"{len(wheels)} wheels, {size_mb:.1f} MB in {dest}")
    if bad:
        raise SystemExit(f"gpu_check: wheels that do not install on cp312 x86_64 Linux: {bad}")
    if size_mb > WHEELHOUSE_LIMIT_MB:
        raise SystemExit(f"gpu_check: the wheelhouse is {size_mb:.1f} MB, over {WHEELHOUSE_LIMIT_MB} MB.")
    return 0


# ------------------------------------------------------------------------------- step workers
# Each runs in a subprocess (`--step NAME`), prints its log, and returns (status, reason, figures).
INFERENCE_CONFIGS = (
    "configs/yolact/yolact_R_50_FPN_550.py", "configs/yolact/yolact_R_101_FPN_550.py",
    "configs/yolact/yolact_plus_R_50_FPN_550.py", "configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py",
)
BENCHMARK_CONFIGS = INFERENCE_CONFIGS[:2]  # the required batch-1 fps figures, then batch 8, fp16 / bf16
MORE_BENCHMARK_CONFIGS = INFERENCE_CONFIGS[2:]  # as time allows: batch 1 (YolactEdge: keyframes vs warped)
TRAIN_CONFIG = "configs/shapes/yolact_shapes_tiny.py"
OP_TEST_FILES = ("tests/test_ops.py", "tests/test_realtime.py")  # their tests named *cuda*


def _device(args) -> str:
    return "cpu" if args.dry_run else "cuda"


def is_video_config(config: str) -> bool:
    """YolactEdge video configs (VideoPredictor, keyframe / warped-frame benchmark)."""
    return "yolact_edge_vid" in os.path.basename(config)


def step_ops_compare(args) -> Tuple[str, str, Dict]:
    """Device kernels vs the CPU kernel and the pure-PyTorch path at YOLACT-550's load."""
    import torch

    from yolact_d2.layers import backend_info, crop_masks, crop_masks_pytorch, fast_nms, fast_nms_pytorch
    from yolact_d2.tools.benchmark_ops import MAX_DETECTIONS, NMS_THRESH, TOP_K, make_detection_load, prefilter

    dev = _device(args)
    figures: Dict = {"device": dev, "backends": backend_info()}
    boxes, scores = prefilter(*make_detection_load("cpu"))
    cpu = fast_nms(boxes, scores, NMS_THRESH, TOP_K, MAX_DETECTIONS)
    pure = fast_nms_pytorch(boxes, scores, NMS_THRESH, TOP_K, MAX_DETECTIONS)
    on_dev = [t.cpu() for t in fast_nms(boxes.to(dev), scores.to(dev), NMS_THRESH, TOP_K, MAX_DETECTIONS)]
    figures["fast_nms"] = {
        "candidates": list(scores.shape), "detections": int(cpu[0].numel()),
        "device_equals_cpu_kernel": all(torch.equal(a, b) for a, b in zip(on_dev, cpu)),
        "cpu_kernel_equals_pure": all(torch.equal(a, b) for a, b in zip(cpu, pure)),
    }
    g = torch.Generator().manual_seed(1)
    for size in (138, 550):
        masks = torch.rand(100, size, size, generator=g)
        c = torch.rand(100, 4, generator=g)
        mboxes = torch.cat([c[:, :2] * 0.7, c[:, :2] * 0.7 + c[:, 2:] * 0.3], 1)
        ref = crop_masks(masks, mboxes)
        figures[f"crop_{size}"] = {
            "device_equals_cpu_kernel": torch.equal(crop_masks(masks.to(dev), mboxes.to(dev)).cpu(), ref),
            "cpu_kernel_equals_pure": torch.equal(ref, crop_masks_pytorch(masks, mboxes)),
        }
    ok = all(figures[part][k] for part in ("fast_nms", "crop_138", "crop_550")
             for k in ("device_equals_cpu_kernel", "cpu_kernel_equals_pure"))
    return ("passed" if ok else "failed"), ("" if ok else "a comparison is not bit-exact (see figures)"), figures


def seeded_checkpoint(config: str, opts: List[str], path: str, seed: int = 0) -> None:
    """Seeded random weights whose class logits give a few confident detections (no download)."""
    import torch
    from detectron2.config import instantiate

    from yolact_d2.predictor import load_model_config

    _, model_cfg = load_model_config(config, opts)
    torch.manual_seed(seed)
    model = instantiate(model_cfg)
    with torch.no_grad():
        head = model.head
        bias = head.cls_score.bias.view(head.num_anchors, head.num_classes + 1)
        bias.fill_(-3.0)
        bias[:, 0] = 0.0  # background
        bias[:, 1 : min(4, head.num_classes + 1)] = 1.5  # a few confident classes
        head.cls_score.weight.mul_(0.05)  # logits = bias + a small prior-dependent spread
    torch.save({"model": model.state_dict()}, path)


def _mask_iou(a, b) -> float:
    """Mean IoU of paired boolean masks; two empty masks agree (IoU 1)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    iou = (inter / union.clamp(min=1)).where(union > 0, 1.0)
    return float(iou.mean()) if len(a) else 1.0


def compare_instances(ref, out) -> Dict:
    """Figures of one device run against the CPU reference (both Instances, any device)."""
    ref, out = ref.to("cpu"), out.to("cpu")
    n = min(len(ref), len(out))
    same_classes = len(ref) == len(out) and bool((ref.pred_classes == out.pred_classes).all())
    score_diff = float((ref.scores[:n] - out.scores[:n]).abs().max()) if n else 0.0
    return {"detections_cpu": len(ref), "detections_device": len(out), "same_classes": same_classes,
            "max_score_diff": score_diff, "mean_mask_iou": _mask_iou(ref.pred_masks[:n], out.pred_masks[:n])}


# Largest score difference allowed against the CPU eager fp32 reference (the bounds).
SCORE_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-3}


def _agree(per_frame: List[Dict], precision: str) -> bool:
    return all(f["same_classes"] and f["max_score_diff"] <= SCORE_TOLERANCE[precision] for f in per_frame)


def fast_path_runs(config: str, weights: str, dev: str, opts: List[str], frames, reference) -> Dict:
    """The real-time path (deploy/realtime.py; CUDA graphs on CUDA, its CPU form in a dry run) per
    precision against the CPU eager reference; fp16 where the device has it."""
    from yolact_d2 import Predictor
    from yolact_d2.deploy.precision import PrecisionError, check_precision

    out: Dict = {}
    for precision in SCORE_TOLERANCE:
        try:
            check_precision(precision, dev)
        except PrecisionError as e:
            out[precision] = {"status": "skipped", "reason": str(e)}
            continue
        # capture_after=1: each frame is seen once here, and the graph is what is checked
        predictor = Predictor(config, weights, device=dev, opts=opts, precision=precision,
                              fast_path={"capture_after": 1})
        engine = predictor.fast_path
        per_frame = [compare_instances(r, predictor(f)) for r, f in zip(reference, frames)]
        out[precision] = {"status": "passed" if _agree(per_frame, precision) else "failed", "frames": per_frame,
                          "cuda_graphs": engine.cuda_graphs, "cuda_graphs_off_because": engine.cuda_graphs_reason,
                          "captured_sizes": engine.captured_sizes,
                          "pinned_upload": engine.pinned, "pinned_off_because": engine.pinned_reason,
                          "graph_errors": engine.graph_errors}
    return out


def step_inference(args) -> Tuple[str, str, Dict]:
    from yolact_d2 import Predictor, VideoPredictor
    from yolact_d2.tools.benchmark import synthetic_image

    dev = _device(args)
    figures: Dict = {"device": dev}
    failed = []
    image = synthetic_image(240, 320, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.inference_configs:
            if not os.path.isfile(os.path.join(REPO, config)):
                figures[config] = {"status": "skipped", "reason": "config not in this checkout"}
                continue
            weights = os.path.join(tmp, "seeded.pth")
            seeded_checkpoint(config, args.opts, weights)
            video = is_video_config(config)
            frames = [image, synthetic_image(240, 320, seed=0)[:, ::-1].copy()] if video else [image]
            runs = {}
            for side in ("cpu", dev):  # the eager path on both sides
                if video:
                    predictor = VideoPredictor(config, weights, device=side, opts=args.opts)
                else:
                    predictor = Predictor(config, weights, device=side, opts=args.opts, fast_path=False)
                runs[side] = [predictor(f) for f in frames]
            per_frame = [compare_instances(r, o) for r, o in zip(runs["cpu"], runs[dev])]
            figures[config] = {"status": "passed" if _agree(per_frame, "fp32") else "failed", "frames": per_frame}
            if not video:  # VideoPredictor keeps keyframe state between calls: eager only
                fast = fast_path_runs(config, weights, dev, args.opts, frames, runs["cpu"])
                figures[config]["fast_path"] = fast
                if any(f["status"] == "failed" for f in fast.values()):
                    figures[config]["status"] = "failed"
            print(config, figures[config], flush=True)
            if figures[config]["status"] == "failed":
                failed.append(config)
    if failed:
        bounds = ", ".join(f"{p} {t:g}" for p, t in SCORE_TOLERANCE.items())
        return "failed", f"classes differ or scores beyond the bounds ({bounds}) for {failed}", figures
    return "passed", "", figures


def step_train_losses(args) -> Tuple[str, str, Dict]:
    """Reads metrics.json of the train_net run the orchestrator started (see run_train)."""
    losses = []
    with open(os.path.join(args.train_dir, "metrics.json")) as f:
        for line in f:
            rec = json.loads(line)
            if "total_loss" in rec:
                losses.append(rec["total_loss"])
    import math

    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    k = max(1, len(losses) // 5)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    figures = {"iterations_logged": len(losses), "total_loss": losses, "first_mean": first, "last_mean": last,
               "decreasing": last < first}
    if not finite:
        return "failed", "a logged loss is not finite (or none was logged)", figures
    if len(losses) >= 10 and not last < first:
        return "failed", f"the loss did not decrease ({first:.4g} -> {last:.4g})", figures
    return "passed", "" if len(losses) >= 10 else "too few iterations to judge the decrease", figures


# (runtime, fp16) of step_onnx_runtimes on the GPU: ONNX Runtime's CUDA provider, then TensorRT's.
ONNX_RUNTIMES = (("cuda", False), ("tensorrt", False), ("tensorrt", True))


def step_onnx_runtimes(args) -> Tuple[str, str, Dict]:
    """The whole-model ONNX export (deploy/onnx.py) of the first --benchmark-configs on ONNX Runtime's
    CUDA and TensorRT providers (fp32; fp16 for TensorRT): its detections against the PyTorch CPU
    model on the same seeded weights, and batch-1 fps end to end (host uint8 frame in, Instances with
    full-size masks out). A provider this onnxruntime lacks, or one whose libraries do not load here,
    is skipped with the reason; a dry run takes the CPU provider only."""
    import statistics

    from yolact_d2 import Predictor
    from yolact_d2.deploy.agreement import compare_detections
    from yolact_d2.deploy.onnx import OnnxPredictor, export_onnx
    from yolact_d2.deploy.optimize import fold_batch_norm
    from yolact_d2.deploy.runtimes import missing_runtime_reason
    from yolact_d2.tools.benchmark import synthetic_image

    config = args.benchmark_configs[0]
    runs = [("cpu", False)] if args.dry_run else list(ONNX_RUNTIMES)
    keys = {(runtime, fp16): runtime + (" fp16" if fp16 else "") for runtime, fp16 in runs}  # figures' keys
    iters = 2 if args.dry_run else 20
    image = synthetic_image(480, 640, seed=0)
    figures: Dict = {"config": config}
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "seeded.pth")
        seeded_checkpoint(config, args.opts, weights)
        predictor = Predictor(config, weights, device="cpu", opts=args.opts, optimize=False, fast_path=False)
        reference = predictor(image)
        t0 = time.monotonic()
        fold_batch_norm(predictor.model)
        path = export_onnx(predictor.model, os.path.join(tmp, "model.onnx"), sample_size=image.shape[:2])
        figures["export_seconds"] = round(time.monotonic() - t0, 1)
        for (runtime, fp16), key in keys.items():
            reason = missing_runtime_reason(runtime)
            if reason:
                figures[key] = {"status": "skipped", "reason": reason}
                continue
            t0 = time.monotonic()  # the first call builds TensorRT's engine
            try:
                runner = OnnxPredictor(path, runtime=runtime, fp16=fp16, engine_cache=os.path.join(tmp, "engines"))
                out = runner(image)
                first = time.monotonic() - t0
                times = []
                for _ in range(iters):
                    t0 = time.perf_counter()
                    runner(image)
                    times.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - a provider that fails to run is this step's finding
                # ...except one listed whose libraries do not load here (deploy.runtimes refuses the
                # fall-back to CPU): the machine's set-up, not our graph
                fell_back = isinstance(e, RuntimeError) and "fell back from" in str(e)
                figures[key] = {"status": "skipped" if fell_back else "failed", "reason": f"{type(e).__name__}: {e}"[:800]}
                continue
            # rows matched by class, score, mask and box: runtimes order near-equal scores differently
            tol = SCORE_TOLERANCE["fp16" if fp16 else "fp32"]
            agreement = compare_detections(out, reference, score_tol=tol)
            ok = agreement["classes_equal"] and agreement["max_score_diff"] <= tol  # as _agree; masks reported
            median = statistics.median(times)
            figures[key] = {"status": "passed" if ok else "failed", "first_call_seconds": round(first, 2),
                            "median_ms": round(1000 * median, 3), "fps_batch1": round(1 / median, 2), **agreement}
            print(key, figures[key], flush=True)
    statuses = [figures[key]["status"] for key in keys.values()]
    if "failed" in statuses:
        return "failed", "a runtime failed or its detections differ beyond the bounds (see figures)", figures
    if "passed" not in statuses:
        return "skipped", "no runtime of " + ", ".join(dict.fromkeys(r for r, _ in runs)) + " is available (see figures)", figures
    return "passed", "", figures


STEP_WORKERS = {"ops_compare": step_ops_compare, "inference": step_inference, "train_losses": step_train_losses,
                "onnx_runtimes": step_onnx_runtimes}


# ------------------------------------------------------------------------------- the orchestrator
# (expected, time box) seconds of a step on the GPU machine (H200, 16 cores): a step starts only
# when the budget left holds its expected time. Estimates from the CPU dry run and the steps' loads
# until a GPU run measures them (each step's "seconds" in gpu_check.json).
STEP_SECONDS = {
    "install": (15, 180), "build_extension": (90, 300), "op_tests": (60, 150), "ops_compare": (20, 90),
    "inference": (70, 240), "train_amp": (45, 180), "train_amp_bf16": (35, 120), "ddp_nccl": (60, 180),
    "benchmark_ops": (25, 120), "onnx_runtimes": (120, 300),  # TensorRT builds two engines
}
BENCHMARK_SECONDS = {"fp32 batch 1": (35, 120), "fp32 batch 8": (40, 120), "fp16+bf16 batch 1,8": (70, 150),
                     "more": (50, 120)}  # by benchmark_plan's kind


class Check:
    """Runs the steps within the budget, appending to the log, collecting the JSON."""

    def __init__(self, args, plan: List[str] = ()):
        self.args = args
        self.start = time.monotonic()
        self.plan = list(plan)  # every step's name, in order: the JSON lists those not run yet
        os.makedirs(args.output, exist_ok=True)
        self.log_path = os.path.join(args.output, "gpu_check.log")
        self.log = open(self.log_path, "w")
        self.env = dict(os.environ)
        # the install target joins once its packages import (see do_install)
        self.env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.steps: Dict[str, Dict] = {}

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def record(self, name: str, status: str, reason: str = "", seconds: float = 0.0, **figures) -> Dict:
        self.steps[name] = {"status": status, "reason": reason, "seconds": round(seconds, 2), **figures}
        self.log.write(f"=== {name}: {status} {reason}\n")
        self.log.flush()
        print(f"[gpu_check] {name}: {status} {reason} ({seconds:.1f} s)", flush=True)
        self.write_json()
        return self.steps[name]

    def run(self, name: str, cmd: List[str], cap_s: float, cwd: str = REPO) -> Tuple[Optional[int], str, float]:
        """Runs cmd time-boxed to min(cap_s, budget left); returns (rc or None on timeout, output, s).

        In its own process group, killed whole at the time box: a step's children (DDP workers,
        data-loader workers) cannot outlive it and hold the GPU or the budget."""
        timeout = max(min(cap_s, self.left()), 1)
        self.log.write(f"=== {name}: $ {' '.join(cmd)} (time box {timeout:.0f} s)\n")
        self.log.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            try:  # what it printed; a process that left the group could hold the pipe open
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.wait()
                out = "(its output is lost: a process it started outside its group holds the pipe)"
            rc = None
        self.log.write((out or "") + "\n")
        self.log.flush()
        return rc, out or "", time.monotonic() - t0

    def budget_allows(self, name: str, expected_s: float) -> bool:
        if self.left() < expected_s:
            self.record(name, "skipped", f"the time budget is spent ({self.left():.0f} s left of "
                                         f"{self.args.budget_s:.0f}; this step needs ~{expected_s:.0f} s)")
            return False
        return True

    def worker(self, name: str, cap_s: float, expected_s: float, extra: List[str] = (), worker: Optional[str] = None, **more):
        """A STEP_WORKERS step in a subprocess; its JSON result becomes the step's entry."""
        if not self.budget_allows(name, expected_s):
            return
        out_json = os.path.join(self.args.output, f".{name}.json")
        cmd = [sys.executable, "-m", "yolact_d2.tools.gpu_check", "--step", worker or name, "--step-json", out_json,
               *(["--dry-run"] if self.args.dry_run else []), *extra]
        rc, out, secs = self.run(name, cmd, cap_s)
        if rc is None:
            self.record(name, "failed", f"timed out after {secs:.0f} s", secs, **more)
        elif rc != 0 or not os.path.exists(out_json):
            self.record(name, "failed", f"exit {rc}: {out.strip().splitlines()[-1] if out.strip() else ''}", secs, **more)
        else:
            with open(out_json) as f:
                res = json.load(f)
            os.remove(out_json)
            self.record(name, res["status"], res["reason"], secs, figures=res["figures"], **more)

    def write_json(self) -> None:
        import platform

        doc = {"dry_run": self.args.dry_run, "budget_s": self.args.budget_s,
               "elapsed_s": round(time.monotonic() - self.start, 1), "python": platform.python_version(),
               "host": platform.node(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "environment": self.environment(), "fps_batch1": self.fps_batch1(),
               "not_run_yet": [n for n in self.plan if n not in self.steps], "steps": self.steps}
        path = os.path.join(self.args.output, "gpu_check.json")
        with open(path + ".tmp", "w") as f:  # then renamed: a kill mid-write leaves the previous JSON whole
            json.dump(doc, f, indent=1)
        os.replace(path + ".tmp", path)

    def fps_batch1(self) -> Dict[str, Dict[str, float]]:
        """The benchmarks' batch-1 images/s by config (the issue's figures: eager vs fast path)."""
        out: Dict[str, Dict[str, float]] = {}
        for step in self.steps.values():
            if step.get("fps"):
                out.setdefault(step["config"], {}).update(step["fps"])
        onnx = (self.steps.get("onnx_runtimes") or {}).get("figures") or {}
        for key, run in onnx.items():  # "onnx cuda", "onnx tensorrt", "onnx tensorrt fp16"
            if isinstance(run, dict) and run.get("fps_batch1"):
                out.setdefault(onnx["config"], {})[f"onnx {key}"] = run["fps_batch1"]
        return out

    def environment(self) -> Dict:
        try:
            import torch
        except ImportError as e:  # reported, and every step that needs torch fails with its error
            return {"torch": None, "error": str(e)}

        env = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
        if torch.cuda.is_available():
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return env


def no_cuda_reason(args) -> Optional[str]:
    import torch

    if args.dry_run:
        return "dry run: the CUDA calls are not made" + ("" if torch.cuda.is_available() else
                                                          " (and torch.cuda.is_available() is False here)")
    if not torch.cuda.is_available():
        return f"torch.cuda.is_available() is False (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    return None


def do_install(c: Check) -> None:
    a = c.args
    if not a.wheelhouse:
        c.record("install", "skipped", "no --wheelhouse given: the current environment is used")
        return
    wheels = sorted(glob.glob(os.path.join(a.wheelhouse, "*.whl")))
    if not wheels:
        c.record("install", "failed", f"no *.whl in --wheelhouse {a.wheelhouse}; make it with --make-wheelhouse")
        return
    bad = [os.path.basename(w) for w in wheels if not wheel_tags_ok(w)]
    import importlib.util

    if importlib.util.find_spec("pip") is not None:
        # the platform flags make pip check the tags against the GPU machine's CPython 3.12 (also in a dry run elsewhere)
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade", "--target", a.site,
               *PLATFORM_ARGS, *wheels]
        rc, out, secs = c.run("install", cmd, STEP_SECONDS["install"][1])
    else:  # no pip there: a wheel is a zip of its site-packages tree (no scripts are needed here)
        import zipfile

        t0 = time.monotonic()
        for w in wheels:
            with zipfile.ZipFile(w) as z:
                z.extractall(a.site)
        rc, secs = 0, time.monotonic() - t0
        c.log.write(f"=== install: no pip; unzipped {len(wheels)} wheels into {a.site}\n")
    if rc != 0:
        why = f"timed out after {secs:.0f} s" if rc is None else f"pip exit {rc}"
        c.record("install", "failed", f"{why} (see gpu_check.log)", secs, wheels=len(wheels))
        return
    if sys.version_info[:2] != (3, 12):
        c.record("install", "passed", f"installed for CPython 3.12; not imported (nor used by the next steps) on "
                 f"Python {sys.version_info[0]}.{sys.version_info[1]}", secs, wheels=len(wheels), target=a.site)
        return
    probe = ("import detectron2, fvcore, iopath, omegaconf, hydra, pycocotools.mask, faster_coco_eval, pytest; "
             "print('FROM', detectron2.__file__)")
    without_site = c.env["PYTHONPATH"]
    c.env["PYTHONPATH"] = os.pathsep.join([a.site, without_site])
    rc, out, more = c.run("install", [sys.executable, "-c", probe], 60)
    ok = rc == 0 and f"FROM {a.site}" in out
    if not ok:
        c.env["PYTHONPATH"] = without_site
    c.record("install", "passed" if ok else "failed",
             "" if ok else f"the installed packages do not import from {a.site}: {(out.strip().splitlines() or [''])[-1]}",
             secs + more, wheels=len(wheels), target=a.site, wheels_not_cp312=bad)


BACKEND_PROBE = "import json, yolact_d2.layers as L; print('BACKENDS', json.dumps(L.backend_info()))"


def _backends(rc: Optional[int], out: str) -> Optional[Dict]:
    lines = [ln for ln in out.splitlines() if ln.startswith("BACKENDS ")]
    return json.loads(lines[-1][len("BACKENDS "):]) if rc == 0 and lines else None


def do_build(c: Check) -> None:
    a = c.args
    expected, cap = STEP_SECONDS["build_extension"]
    if not c.budget_allows("build_extension", expected):
        return
    if a.dry_run:
        rc, out, secs = c.run("build_extension", [sys.executable, "-c", BACKEND_PROBE], 60)
        info = _backends(rc, out)
        ok = bool(info) and info["fast_nms"]["cpu"] == "cpu-kernel"
        c.record("build_extension", "passed" if ok else "failed",
                 "dry run: the checkout's built extension is checked, not rebuilt; its CUDA kernels are not run",
                 secs, backends=info)
        return
    env_note = {}
    if "TORCH_CUDA_ARCH_LIST" not in c.env:
        import torch

        if torch.cuda.is_available():  # build for the GPUs present only: the shortest build
            caps = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            c.env["TORCH_CUDA_ARCH_LIST"] = ";".join(caps)
    c.env.setdefault("MAX_JOBS", str(os.cpu_count() or 2))
    env_note["TORCH_CUDA_ARCH_LIST"] = c.env.get("TORCH_CUDA_ARCH_LIST")
    rc, out, secs = c.run("build_extension", [sys.executable, "setup.py", "build_ext", "--inplace"], cap)
    if rc != 0:
        c.record("build_extension", "failed", f"setup.py build_ext exit {rc} (see gpu_check.log)", secs, **env_note)
        return
    rc2, probe, more = c.run("build_extension", [sys.executable, "-c", BACKEND_PROBE], 60)
    info = _backends(rc2, probe)
    cuda_ok = bool(info) and info["fast_nms"]["cuda"] == "cuda-kernel" and info["crop_masks"]["cuda"] == "cuda-kernel"
    messages = [ln for ln in out.splitlines() if ln.startswith("[yolact_d2]")]
    c.record("build_extension", "passed" if cuda_ok else "failed",
             "" if cuda_ok else "the extension has no CUDA kernels (a CPU-only build): " + " ".join(messages),
             secs + more, backends=info, setup_messages=messages, **env_note)


def do_op_tests(c: Check, why_not: Optional[str]) -> None:
    expected, cap = STEP_SECONDS["op_tests"]
    if not c.budget_allows("op_tests", expected):
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *OP_TEST_FILES, "-k", "cuda"]
    rc, out, secs = c.run("op_tests", cmd, cap)
    tail = out.strip().splitlines()[-1] if out.strip() else ""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    for part in tail.replace("=", " ").split(","):
        words = part.split()
        for i, w in enumerate(words[1:], 1):
            if w.rstrip("s") in counts and words[i - 1].isdigit():
                counts[w.rstrip("s")] = int(words[i - 1])
    if rc is None:
        c.record("op_tests", "failed", f"timed out after {secs:.0f} s", secs, pytest=counts)
    elif counts["failed"] or counts["error"] or rc not in (0, 5):
        c.record("op_tests", "failed", f"pytest: {tail}", secs, pytest=counts)
    elif counts["passed"] == 0:
        c.record("op_tests", "skipped", f"pytest skipped every CUDA test ({tail}): {why_not or 'no CUDA'}", secs, pytest=counts)
    else:
        c.record("op_tests", "passed", "", secs, pytest=counts)


def train_command(config: str, device: str, amp: bool, iters: int, out_dir: str, flags: List[str] = (),
                  amp_dtype: str = "float16") -> List[str]:
    """train_net.py logging every iteration to out_dir/metrics.json, no checkpoints, no evaluation."""
    return [sys.executable, "tools/train_net.py", *flags, "--config-file", config, f"train.device={device}",
            f"train.amp.enabled={amp}", f"train.amp.dtype={amp_dtype}", f"train.max_iter={iters}",
            f"train.output_dir={out_dir}", "train.log_period=1", "train.checkpointer.period=100000",
            "train.eval_period=0"]


def bf16_training_problem(args) -> Optional[str]:
    """Why the bf16 AMP run does not happen here (None: it does)."""
    import torch

    if args.dry_run:
        return "dry run: on the CPU it would be train_amp's command again (AMP needs CUDA)"
    if not torch.cuda.is_available() or not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 (compute capability < 8.0)" if torch.cuda.is_available() else "no CUDA"
    return None


def do_training(c: Check, why_not: Optional[str]) -> None:
    a = c.args
    iters = 3 if a.dry_run else a.train_iters
    # fp16 with GradScaler, then bf16 (no scaler); a dry run trains 3 CPU iterations without AMP
    for name, amp_dtype in (("train_amp", "float16"), ("train_amp_bf16", "bfloat16")):
        skip = bf16_training_problem(a) if amp_dtype == "bfloat16" else None
        if skip:
            c.record(name, "skipped", skip)
            continue
        expected, cap = STEP_SECONDS[name]
        if not c.budget_allows(name, expected):
            continue
        out_dir = os.path.join(a.output, name)
        shutil.rmtree(out_dir, ignore_errors=True)
        device, amp = ("cpu", False) if a.dry_run else ("cuda", True)
        n = iters if amp_dtype == "float16" else min(iters, 20)  # bf16: a shorter second run (time box)
        cmd = train_command(a.train_config, device, amp, n, out_dir, amp_dtype=amp_dtype)
        rc, out, secs = c.run(name, cmd, cap)
        cuda = {"status": "skipped", "reason": why_not} if why_not else {"status": "run", "amp": True}
        if rc != 0:
            c.record(name, "failed", f"train_net exit {rc} (see gpu_check.log)", secs, device=device, cuda=cuda)
        else:
            c.worker(name, 30, 1, ["--train-dir", out_dir], worker="train_losses", device=device,
                     iterations=n, amp=amp, amp_dtype=amp_dtype, cuda=cuda, train_seconds=round(secs, 1))
    import torch

    n_gpu = torch.cuda.device_count() if not a.dry_run else 0
    if why_not or n_gpu < 2:
        c.record("ddp_nccl", "skipped", why_not or f"{n_gpu} GPU(s): the 2-process NCCL run needs 2")
        return
    expected, cap = STEP_SECONDS["ddp_nccl"]
    if c.budget_allows("ddp_nccl", expected):
        out_dir = os.path.join(a.output, "train_ddp")
        cmd = train_command(a.train_config, "cuda", True, 20, out_dir, ["--num-gpus", "2"])
        rc, out, secs = c.run("ddp_nccl", cmd, cap)
        if rc != 0:
            c.record("ddp_nccl", "failed", f"train_net --num-gpus 2 exit {rc}", secs)
        else:
            c.worker("ddp_nccl", 30, 1, ["--train-dir", out_dir], worker="train_losses", train_seconds=round(secs, 1))


def benchmark_plan(args) -> List[Tuple[str, str, str, List[str], List[str]]]:
    """(step name, kind, config, precisions, batch sizes) in the order they run: the required figures
    first (every --benchmark-configs at fp32 batch 1: eager and fast path), then their fp32 batch 8,
    then their fp16 + bf16 at batch 1 and 8, then every --more-benchmark-configs at batch 1."""
    plan = []

    def add(kind: str, config: str, precisions: List[str], batches: List[str]) -> None:
        label = f"{'+'.join(precisions)} batch {','.join(batches)}"
        plan.append((f"benchmark:{os.path.basename(config)} {label}", kind, config, precisions, batches))

    for kind, precisions, batches in (("fp32 batch 1", ["fp32"], ["1"]), ("fp32 batch 8", ["fp32"], ["8"]),
                                      ("fp16+bf16 batch 1,8", ["fp16", "bf16"], ["1", "8"])):
        for config in args.benchmark_configs:
            add(kind, config, precisions, batches)
    for config in args.more_benchmark_configs:  # YolactEdge: fp32 keyframes vs warped frames (batch 1)
        add("more", config, ["fp32"] if is_video_config(config) else ["fp32", "fp16"], ["1"])
    return plan


def benchmark_command(args, config: str, precisions: List[str], batches: List[str], js: str) -> List[str]:
    """tools/benchmark.py on the device, eager Predictor and (image configs) the fast path; no
    un-optimised model nor Mask R-CNN: their time goes to the figures the issue asks for."""
    if args.dry_run:  # the same command on the CPU, seconds long (as --quick, but keeping the batch sizes)
        timing = ["--image-size", "96", "128", "--warmup", "0", "--iters", "1", "--no-stages"]
        opts = ["model.input_size=192", *args.opts]
    else:
        timing, opts = ["--warmup", "3", "--iters", "10"], list(args.opts)
    return [sys.executable, "tools/benchmark.py", "--config", config, "--device", _device(args), "--json", js,
            "--precisions", *precisions, "--batch-sizes", *batches, *timing, "--no-maskrcnn", "--no-plain",
            *([] if is_video_config(config) else ["--fast-path"]), *(["--opts", *opts] if opts else [])]


def do_benchmarks(c: Check, why_not: Optional[str]) -> None:
    a = c.args
    dev = _device(a)
    cuda = {"status": "skipped", "reason": why_not} if why_not else None
    for name, kind, config, precisions, batches in benchmark_plan(a):
        if a.dry_run:  # the GPU precisions are not timed on the CPU
            precisions = [p for p in precisions if p not in ("fp16", "bf16")]
            if not precisions:
                c.record(name, "skipped", "dry run: fp16 and bf16 are timed on the GPU only", cuda=cuda)
                continue
        expected, cap = BENCHMARK_SECONDS[kind]
        if not c.budget_allows(name, expected):
            continue
        slug = "".join(ch if ch.isalnum() else "_" for ch in name[len("benchmark:"):])
        js = os.path.join(a.output, f"benchmark_{slug}.json")
        rc, out, secs = c.run(name, benchmark_command(a, config, precisions, batches, js), cap)
        res = json.load(open(js)) if rc == 0 and os.path.exists(js) else None
        why = "" if res else (f"timed out after {secs:.0f} s" if rc is None else f"exit {rc} (see gpu_check.log)")
        c.record(name, "passed" if res else "failed", why, secs, config=config, precisions=precisions,
                 batch_sizes=[int(b) for b in batches], device=dev, fps=res and batch1_fps(res), results=res, cuda=cuda)


def do_benchmark_ops(c: Check, why_not: Optional[str]) -> None:
    a = c.args
    dev = _device(a)
    cuda = {"status": "skipped", "reason": why_not} if why_not else None
    expected, cap = STEP_SECONDS["benchmark_ops"]
    if c.budget_allows("benchmark_ops", expected):  # last: the kernels' own timings, the least needed
        js = os.path.join(a.output, "benchmark_ops.json")
        iters = ["--iters", "2", "--warmup", "1"] if a.dry_run else ["--iters", "30"]
        rc, out, secs = c.run("benchmark_ops", [sys.executable, "tools/benchmark_ops.py", "--device", dev, *iters, "--json", js], cap)
        res = json.load(open(js)) if rc == 0 and os.path.exists(js) else None
        c.record("benchmark_ops", "passed" if res else "failed", "" if res else f"exit {rc} (see gpu_check.log)", secs,
                 device=dev, results=res and res["results"], cuda=cuda)


def batch1_fps(results: Dict) -> Dict[str, float]:
    """Images/s of every contender at batch 1 (eager "yolact_d2 [precision]", "yolact_d2 fast path
    [precision]"), end to end: a host uint8 frame in, Instances with full-size masks out. A run whose
    base precision is not fp32 (the fp16 run) names it: its "yolact_d2" is fp16."""
    fps = {}
    for run in results.get("runs", []):
        if run.get("batch") != 1:
            continue
        base = (run.get("precisions") or ["fp32"])[0]
        for name, r in run.get("contenders", {}).items():
            fps[name if base == "fp32" else f"{name} {base}"] = r["images_per_s"]
    return fps


def step_names(args) -> List[str]:
    """Every step's name, in the order run_check runs them."""
    return ["install", "build_extension", "op_tests", "ops_compare", "inference", "train_amp", "train_amp_bf16",
            "ddp_nccl", *[name for name, *_ in benchmark_plan(args)], "onnx_runtimes", "benchmark_ops"]


def device_worker(c: Check, name: str, why_not: Optional[str], extra: List[str] = ()) -> None:
    """A STEP_WORKERS step that compares the device with the CPU: skipped in a real run without CUDA
    (nothing to compare), else run (the dry run records the CUDA side as skipped, with why_not)."""
    if why_not and not c.args.dry_run:
        c.record(name, "skipped", why_not)
        return
    expected, cap = STEP_SECONDS[name]
    c.worker(name, cap, expected, list(extra), **({"cuda": {"status": "skipped", "reason": why_not}} if why_not else {}))


def run_check(args) -> int:
    args.site = os.path.abspath(args.site or os.path.join(args.output, "site")) if args.wheelhouse else None
    c = Check(args, step_names(args))
    do_install(c)
    do_build(c)
    why_not = no_cuda_reason(args)
    do_op_tests(c, why_not)
    opts = ["--opts", *args.opts] if args.opts else []
    device_worker(c, "ops_compare", why_not)
    device_worker(c, "inference", why_not, ["--inference-configs", *args.inference_configs, *opts])
    do_training(c, why_not)
    do_benchmarks(c, why_not)
    device_worker(c, "onnx_runtimes", why_not, ["--benchmark-configs", *args.benchmark_configs[:1], *opts])
    do_benchmark_ops(c, why_not)
    c.write_json()
    c.log.close()
    failed = [n for n, s in c.steps.items() if s["status"] == "failed"]
    print(f"[gpu_check] wrote {os.path.join(args.output, 'gpu_check.json')}; "
          + (f"FAILED: {', '.join(failed)}" if failed else "no step failed"))
    return 1 if failed else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make-wheelhouse", metavar="DIR", help="download/build the cp312 wheels into DIR and exit")
    p.add_argument("--wheelhouse", help="install from these wheels first (pip --no-index --no-deps --target)")
    p.add_argument("--site", help="the install target (default: <output>/site)")
    p.add_argument("--output", default="output/gpu_check", help="gpu_check.json and gpu_check.log go here")
    p.add_argument("--dry-run", action="store_true", help="CPU only: every step but the CUDA calls")
    p.add_argument("--budget-s", type=float, default=480.0, help="total time budget (steps past it are skipped)")
    p.add_argument("--inference-configs", nargs="+", default=list(INFERENCE_CONFIGS))
    p.add_argument("--benchmark-configs", nargs="*", default=list(BENCHMARK_CONFIGS),
                   help="fp32 batch 1 first (the required fps), then fp32 batch 8, then fp16 + bf16")
    p.add_argument("--more-benchmark-configs", nargs="*", default=list(MORE_BENCHMARK_CONFIGS),
                   help="batch 1, after every --benchmark-configs run, as the budget allows")
    p.add_argument("--train-config", default=TRAIN_CONFIG)
    p.add_argument("--train-iters", type=int, default=50)
    p.add_argument("--opts", nargs="*", default=[], help="LazyConfig overrides for inference and benchmarks")
    p.add_argument("--step", choices=sorted(STEP_WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--step-json", help=argparse.SUPPRESS)
    p.add_argument("--train-dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.make_wheelhouse:
        return make_wheelhouse(args.make_wheelhouse)
    if args.step:
        status, reason, figures = STEP_WORKERS[args.step](args)
        with open(args.step_json, "w") as f:
            json.dump({"status": status, "reason": reason, "figures": figures}, f, indent=1)
        return 0
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
