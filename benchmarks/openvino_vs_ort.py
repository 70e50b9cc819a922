"""OpenVINO (with NNCF) against our int8 / bf16 / fp32 CPU engines, side by side in one run (issue 12).

    .venv/bin/python benchmarks/openvino_vs_ort.py --rounds 15 --output benchmarks/openvino_vs_ort_<date>.txt
    .venv/bin/python benchmarks/openvino_vs_ort.py --no-eval      # timing only (no trained shapes model)

Needs `pip install openvino nncf` (not a yolact_d2 requirement: this script decides whether it
should be one). What it measures, all on the R50-550 network graph (deploy/network_graph.py:
normalised image (1, 3, 550, 550) -> loc, conf, coef, proto), seeded weights (torch.manual_seed
then the config's own initialisation, as tools/benchmark.py builds ours), batch 1, --threads:

  network time, round robin (order rotated every round; median, quartiles, best, CPU time):
    ort_qdq_int8    our int8: ONNX Runtime static QDQ (Predictor(precision="int8")'s graph, its session)
    ov_qdq_int8     the same QDQ ONNX file compiled by OpenVINO's CPU plugin (QDQ runs as int8 there)
    ov_nncf_int8    NNCF post-training quantization (nncf.quantize, defaults) of the fp32 network
                    on OpenVINO, calibrated on the same images as ours
    ort_fp32 / ov_fp32 / torch_fp32     the fp32 network (torch: our optimized Predictor network)
    ov_bf16 / torch_bf16                OpenVINO with INFERENCE_PRECISION_HINT=bf16 / our PyTorch bf16
  end to end (BGR uint8 640x480 in, Instances out; our pre/post-processing around each network)
  accuracy (unless --no-eval): shapes_val box / mask AP of the trained shapes model
    (output/yolact_shapes/model_final.pth, `bash scripts/run_main.sh` writes it) for fp32, our int8,
    OpenVINO on our QDQ graph and NNCF on OpenVINO, calibrated on the same 100 training images
    (tools/benchmark.evaluate_precisions: Detectron2's COCOEvaluator, agreement with fp32).

Everything it builds (seeded weights, calibration images, int8 / NNCF models) is cached under
--work (default output/openvino_vs_ort/). The machine is shared: compare medians of the same
rounds and the best-of figures, not single runs.

Result on 2026-12-01 (openvino_vs_ort_2026-12-01.txt, 2 threads; _1thread.txt): no OpenVINO engine
beat ONNX Runtime QDQ int8 by the 10% that would make it a yolact_d2 runtime (NNCF 3% / 8% faster
network / end to end at 2 threads, 0.12 lower mask AP; OpenVINO on our QDQ graph 17% slower), fp32
tied; OpenVINO bf16 beat our PyTorch bf16 by 30-40% at 2 threads on the loaded machine but by only
5-9% at 1 thread, so most of that gap is thread scheduling under load (README, "int8").
"""
import argparse
import copy
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50 = os.path.join(REPO, "configs", "yolact", "yolact_R_50_FPN_550.py")
SHAPES = os.path.join(REPO, "configs", "shapes", "yolact_shapes.py")
SHAPES_WEIGHTS = os.path.join(REPO, "output", "yolact_shapes", "model_final.pth")


def ov_config(threads: int, precision: str, pinning: bool = True) -> Dict[str, str]:
    """OpenVINO CPU settings: one latency stream on `threads` threads at `precision` (f32 / bf16)
    for whatever is not int8 (f32 is explicit: AMX CPUs default to bf16). pinning: OpenVINO's
    default (threads pinned to cores); off shows what pinning does on a shared machine."""
    return {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
            "INFERENCE_PRECISION_HINT": precision, "ENABLE_CPU_PINNING": "YES" if pinning else "NO"}


class OpenVinoNetwork:
    """An OpenVINO compiled network graph with OnnxNetworkYolact's `network` and `__call__`, so it
    slots into an int8 Predictor in place of the ONNX Runtime runner (end-to-end and AP figures).
    `onnx_path`: an ONNX graph with the same inputs / outputs (for the priors and the checks)."""

    def __init__(self, compiled, onnx_path: str, model):
        from yolact_d2.deploy.network_graph import OnnxNetworkYolact

        self.base = OnnxNetworkYolact(onnx_path, model)
        self.model, self.priors, self.outputs = model, self.base.priors, self.base.outputs
        self.request = compiled.create_infer_request()

    def network(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        result = self.request.infer({"images": np.ascontiguousarray(images.float().cpu().numpy())})
        by_name = {port.get_any_name(): value for port, value in result.items()}
        return {name: torch.from_numpy(np.array(by_name[name], np.float32)) for name in self.outputs}

    def __call__(self, inputs):
        with torch.no_grad():
            images = self.model.preprocess_image(list(inputs), resize=True)
            return self.model.inference_from_predictions(self.network(images.tensor), self.priors, images, list(inputs))

    def eval(self):
        return self


def with_runner(predictor, runner):
    """A shallow copy of an int8 Predictor whose network runs in `runner`."""
    other = copy.copy(predictor)
    other._int8 = runner
    return other


def seeded_weights(config: str, path: str, seed: int = 0) -> str:
    """The config's own random initialisation after torch.manual_seed(seed), saved as a checkpoint
    (what tools/benchmark.py runs without --weights; int8 needs a file to cache next to)."""
    if not os.path.isfile(path):
        from detectron2.config import LazyConfig, instantiate

        torch.manual_seed(seed)
        model = instantiate(LazyConfig.load(config).model)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"model": model.state_dict()}, path)
    return path


def calibration_folder(folder: str, count: int) -> str:
    """`count` seeded synthetic 480x640 BGR images (tools/benchmark.synthetic_image) as PNG files."""
    import cv2

    from yolact_d2.tools.benchmark import synthetic_image

    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        path = os.path.join(folder, f"calib_{i:03d}.png")
        if not os.path.isfile(path):
            cv2.imwrite(path, synthetic_image(480, 640, seed=1000 + i))
    return folder


def fp32_network_onnx(config: str, weights: str, path: str) -> str:
    """The fp32 network graph (batch norms folded, as the int8 path exports it)."""
    if not os.path.isfile(path):
        from yolact_d2 import Predictor
        from yolact_d2.deploy.network_graph import export_network_onnx
        from yolact_d2.deploy.optimize import fold_batch_norm

        model = Predictor(config, weights, device="cpu", optimize=False).model
        fold_batch_norm(model)
        export_network_onnx(model, path)
    return path


def nncf_int8(core, fp32_onnx: str, feeds: List[np.ndarray], path: str):
    """NNCF post-training quantization (its defaults: performance preset, fast bias correction) of
    the fp32 network on OpenVINO, calibrated on `feeds`; cached as OpenVINO IR at `path` (.xml)."""
    if not os.path.isfile(path):
        import nncf
        import openvino as ov

        start = time.perf_counter()
        quantized = nncf.quantize(core.read_model(fp32_onnx), nncf.Dataset(feeds), subset_size=len(feeds))
        ov.save_model(quantized, path)
        print(f"nncf.quantize on {len(feeds)} images: {time.perf_counter() - start:.1f} s -> {path}", flush=True)
    return core.read_model(path)


def round_robin(contenders: Dict[str, Callable[[], object]], rounds: int, warmup: int) -> Dict[str, Dict]:
    """Each round calls every contender once, the order rotated by one each round; wall and CPU
    time of this process per call."""
    names = list(contenders)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            contenders[name]()
            t1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup:
                wall[name].append(1000 * (t1 - t0))
                cpu[name].append(1000 * (c1 - c0))
    stats = {}
    for n in names:
        q = statistics.quantiles(wall[n], n=4, method="inclusive") if len(wall[n]) > 1 else [wall[n][0]] * 3
        stats[n] = {"median": statistics.median(wall[n]), "p25": q[0], "p75": q[2], "best": min(wall[n]),
                    "cpu_median": statistics.median(cpu[n]), "samples": wall[n]}
    return stats


def table(stats: Dict[str, Dict], reference: str, title: str) -> str:
    from tabulate import tabulate

    ref = stats[reference]
    rows = [[n, f"{s['median']:.1f}", f"{s['p25']:.1f}-{s['p75']:.1f}", f"{s['best']:.1f}", f"{s['cpu_median']:.1f}",
             f"{statistics.median(a / b for a, b in zip(s['samples'], ref['samples'])):.3f}",
             f"{s['best'] / ref['best']:.3f}"] for n, s in stats.items()]
    head = ["contender", "median ms", "p25-p75", "best ms", "CPU ms (median)",
            f"/ {reference} (median of same-round quotients)", f"best / {reference}"]
    return f"{title}\n{tabulate(rows, head, tablefmt='github')}\n"


def timing(args, core, out) -> None:
    from yolact_d2 import Predictor
    from yolact_d2.deploy.network_graph import NetworkGraph, OnnxNetworkYolact, network_feed
    from yolact_d2.deploy.quantize import calibration_files, calibration_images
    from yolact_d2.tools.benchmark import synthetic_image

    work = args.work
    weights = seeded_weights(R50, os.path.join(work, "r50_seed0.pth"))
    calib = calibration_folder(os.path.join(work, f"calib{args.calibration_images}"), args.calibration_images)
    t0 = time.perf_counter()
    int8 = Predictor(R50, weights, device="cpu", precision="int8", calibration=calib)
    out(f"our int8 Predictor (ORT QDQ, {args.calibration_images} images; cached if unchanged): "
        f"{time.perf_counter() - t0:.1f} s -> {os.path.basename(int8.int8_path)}")
    fp32 = Predictor(R50, weights, device="cpu")
    bf16 = Predictor(R50, weights, device="cpu", precision="bf16")
    fp32_onnx = fp32_network_onnx(R50, weights, os.path.join(work, "r50_seed0.fp32.onnx"))
    feeds = [network_feed(int8.model, image)["images"]
             for image in calibration_images(calibration_files(None, calib, args.calibration_images))]
    nncf_model = nncf_int8(core, fp32_onnx, feeds, os.path.join(work, f"r50_seed0.nncf{len(feeds)}.xml"))

    compiled = {
        "ov_qdq_int8": core.compile_model(core.read_model(int8.int8_path), "CPU", ov_config(args.threads, "f32")),
        "ov_qdq_int8_unpinned": core.compile_model(core.read_model(int8.int8_path), "CPU",
                                                   ov_config(args.threads, "f32", pinning=False)),
        "ov_nncf_int8": core.compile_model(nncf_model, "CPU", ov_config(args.threads, "f32")),
        "ov_fp32": core.compile_model(core.read_model(fp32_onnx), "CPU", ov_config(args.threads, "f32")),
        "ov_bf16": core.compile_model(core.read_model(fp32_onnx), "CPU", ov_config(args.threads, "bf16")),
    }
    for name, c in compiled.items():
        props = {k: str(c.get_property(k)) for k in ("INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT",
                                                      "NUM_STREAMS", "ENABLE_CPU_PINNING")}
        out(f"{name}: {props}")
    runners = {name: OpenVinoNetwork(c, int8.int8_path, int8.model) for name, c in compiled.items()}
    ort_fp32 = OnnxNetworkYolact(fp32_onnx, int8.model)

    image = synthetic_image(480, 640, seed=0)
    x = torch.from_numpy(network_feed(int8.model, image)["images"])
    x_bf16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    torch_fp32_net, torch_bf16_net = NetworkGraph(fp32.model).eval(), NetworkGraph(bf16.model).eval()

    def torch_net(net, images):
        def run():
            with torch.inference_mode():
                return net(images)
        return run

    # Same outputs first (a network that is fast because it computes something else is no contender).
    ref = ort_fp32.network(x)
    for name, runner in [("ort_qdq_int8", int8._int8)] + list(runners.items()):
        got = runner.network(x)
        diffs = {k: float((got[k] - ref[k]).abs().max()) for k in ("conf", "proto")}
        out(f"{name} vs ort_fp32 network outputs, max |diff|: conf {diffs['conf']:.3g}, proto {diffs['proto']:.3g}")

    network = {
        "ort_qdq_int8": lambda: int8._int8.network(x),
        "ov_qdq_int8": lambda: runners["ov_qdq_int8"].network(x),
        "ov_qdq_int8_unpinned": lambda: runners["ov_qdq_int8_unpinned"].network(x),
        "ov_nncf_int8": lambda: runners["ov_nncf_int8"].network(x),
        "ort_fp32": lambda: ort_fp32.network(x),
        "ov_fp32": lambda: runners["ov_fp32"].network(x),
        "torch_fp32": torch_net(torch_fp32_net, x.contiguous(memory_format=torch.channels_last)),
        "ov_bf16": lambda: runners["ov_bf16"].network(x),
        "torch_bf16": torch_net(torch_bf16_net, x_bf16),
    }
    out(f"\nload average before timing: {os.getloadavg()}")
    stats = round_robin(network, args.rounds, args.warmup)
    out(table(stats, "ort_qdq_int8", f"Network time, R50-550, batch 1, {args.threads} threads, "
                                     f"{args.rounds} rounds after {args.warmup} warm-up, order rotated:"))
    predictors = {
        "int8 ORT QDQ (ours)": int8,
        "int8 OpenVINO on our QDQ": with_runner(int8, runners["ov_qdq_int8"]),
        "int8 NNCF on OpenVINO": with_runner(int8, runners["ov_nncf_int8"]),
        "bf16 PyTorch (ours)": bf16,
        "bf16 OpenVINO": with_runner(int8, runners["ov_bf16"]),
        "fp32 PyTorch (ours)": fp32,
    }
    calls = {name: (lambda p=p: p(image)) for name, p in predictors.items()}
    out(f"load average before timing: {os.getloadavg()}")
    stats = round_robin(calls, args.rounds, args.warmup)
    out(table(stats, "int8 ORT QDQ (ours)", f"End to end (640x480 BGR uint8 -> Instances, {len(fp32(image))} "
                                            f"fp32 detections), same rounds rule:"))
    out(f"load average after timing: {os.getloadavg()}")


def accuracy(args, core, out) -> None:
    from detectron2.config import LazyConfig

    from yolact_d2 import Predictor
    from yolact_d2.deploy.network_graph import network_feed
    from yolact_d2.deploy.quantize import calibration_files, calibration_images
    from yolact_d2.tools.benchmark import evaluate_precisions

    if not os.path.isfile(args.shapes_weights):
        out(f"accuracy skipped: no trained shapes model at {args.shapes_weights} (bash scripts/run_main.sh writes it)")
        return
    cfg = LazyConfig.load(SHAPES)  # registers shapes_train / shapes_val
    fp32 = Predictor(SHAPES, args.shapes_weights, device="cpu")
    bf16 = Predictor(SHAPES, args.shapes_weights, device="cpu", precision="bf16")
    int8 = Predictor(SHAPES, args.shapes_weights, device="cpu", precision="int8")  # 100 training images, as ours
    files = calibration_files(cfg, None, 100)
    feeds = [network_feed(int8.model, image)["images"] for image in calibration_images(files)]
    fp32_onnx = fp32_network_onnx(SHAPES, args.shapes_weights, os.path.join(args.work, "shapes.fp32.onnx"))
    nncf_model = nncf_int8(core, fp32_onnx, feeds, os.path.join(args.work, f"shapes.nncf{len(feeds)}.xml"))
    predictors = {
        "fp32": fp32,
        "int8 ORT QDQ (ours)": int8,
        "int8 OpenVINO on our QDQ": with_runner(int8, OpenVinoNetwork(
            core.compile_model(core.read_model(int8.int8_path), "CPU", ov_config(args.threads, "f32")),
            int8.int8_path, int8.model)),
        "int8 NNCF on OpenVINO": with_runner(int8, OpenVinoNetwork(
            core.compile_model(nncf_model, "CPU", ov_config(args.threads, "f32")), int8.int8_path, int8.model)),
        "bf16 OpenVINO": with_runner(int8, OpenVinoNetwork(
            core.compile_model(core.read_model(fp32_onnx), "CPU", ov_config(args.threads, "bf16")),
            int8.int8_path, int8.model)),
        "bf16 PyTorch (ours)": bf16,
    }
    result = evaluate_precisions(predictors, "shapes_val")
    out(f"\nAccuracy: trained shapes model on shapes_val ({result['images']} images), calibration: the first "
        f"{len(files)} shapes_train images (ours and NNCF alike)")
    from tabulate import tabulate

    rows = []
    for name, m in result["precisions"].items():
        agree = m.get("agreement_with_fp32", {})
        rows.append([name, f"{m['bbox']['AP']:.3f}", f"{m['segm']['AP']:.3f}",
                     f"{agree.get('matched', '-')}/{agree.get('fp32_detections', '-')}",
                     agree.get("mask_iou_mean", "-"), agree.get("score_diff_max", "-")])
    out(tabulate(rows, ["engine", "bbox AP", "segm AP", "matched/fp32", "mean mask IoU", "max |score diff|"],
                 tablefmt="github"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibration-images", type=int, default=50, help="R50 timing: seeded synthetic images")
    p.add_argument("--work", default=os.path.join(REPO, "output", "openvino_vs_ort"))
    p.add_argument("--shapes-weights", default=SHAPES_WEIGHTS)
    p.add_argument("--no-eval", action="store_true", help="skip the shapes_val accuracy")
    p.add_argument("--no-timing", action="store_true", help="skip the R50 timing")
    p.add_argument("--output", default=None, help="also write the report to this file")
    args = p.parse_args(argv)
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise SystemExit(f"openvino_vs_ort: {e}; this comparison needs `pip install openvino nncf`.") from None
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    lines: List[str] = []

    def out(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    import onnxruntime

    cpu = platform.processor() or platform.machine()
    out(f"openvino_vs_ort, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu}, "
        f"{os.cpu_count()} cores; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino "
        f"{ov.__version__}, nncf {nncf.__version__}")
    core = ov.Core()
    out(f"OpenVINO CPU capabilities: {core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}")
    if not args.no_timing:
        timing(args, core, out)
    if not args.no_eval:
        accuracy(args, core, out)
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
