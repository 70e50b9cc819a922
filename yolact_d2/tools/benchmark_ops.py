"""Benchmark YOLACT's Fast NMS and mask crop at the real load of a 550x550 YOLACT.

Fast NMS: 19,248 priors, 80 classes, softmax scores (mostly background, a few confident clusters
of priors on objects), the confidence pre-filter 0.05 (inside every timed path), top 200 per
class, 100 detections. Paths: our op (compiled kernel), the pure-PyTorch path, and
torchvision.ops.batched_nms (standard per-class NMS on the same top-200-per-class candidates).
Crop: 100 masks at 138x138 (prototype resolution) and at 550x550: our op vs the pure path.

    python tools/benchmark_ops.py [--device cpu|cuda] [--iters 30] [--threads 1,2] [--json out.json]

"x ours" is each path's median divided by ours (> 1: ours is faster). On a busy machine, use
--threads 1 as well: with more threads than free cores every parallel op waits for descheduled
workers, which swamps millisecond-scale timings.
"""
import argparse
import json
import platform
import statistics
import time

import torch
import torchvision

from yolact_d2.layers import backend_info, crop_masks, crop_masks_pytorch, fast_nms, fast_nms_pytorch

NUM_PRIORS = 19248  # YOLACT-550: 69^2+35^2+18^2+9^2+5^2 locations x 3 aspect ratios
NUM_CLASSES = 80
CONF_THRESH = 0.05
NMS_THRESH = 0.5
TOP_K = 200
MAX_DETECTIONS = 100


def make_detection_load(device, seed=0, num_objects=15, priors_per_object=60):
    """(P, 4) xyxy pixel boxes and (P, C+1) softmax confidences (index 0 = background)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(NUM_PRIORS, 2, generator=g) * 550
    sizes = 10 + torch.rand(NUM_PRIORS, 2, generator=g) * 200
    boxes = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=1)
    logits = torch.randn(NUM_PRIORS, NUM_CLASSES + 1, generator=g)
    logits[:, 0] += 5.5  # most priors are background: about 1 in 5 passes conf 0.05
    # objects: clusters of priors with jittered copies of the object box, confident in its class
    obj_xy = torch.rand(num_objects, 2, generator=g) * 450
    obj_wh = 30 + torch.rand(num_objects, 2, generator=g) * 200
    obj_cls = torch.randint(1, NUM_CLASSES + 1, (num_objects,), generator=g)
    chosen = torch.randperm(NUM_PRIORS, generator=g)[: num_objects * priors_per_object].view(num_objects, -1)
    for o in range(num_objects):
        idx = chosen[o]
        box = torch.cat([obj_xy[o], obj_xy[o] + obj_wh[o]])
        boxes[idx] = box + torch.randn(len(idx), 4, generator=g) * 0.08 * obj_wh[o].repeat(2)
        logits[idx, obj_cls[o]] += 4 + 4 * torch.rand(len(idx), generator=g)
        confuser = torch.randint(1, NUM_CLASSES + 1, (1,), generator=g)  # a look-alike class
        logits[idx, confuser] += 3 * torch.rand(len(idx), generator=g)
    conf = torch.softmax(logits, dim=1)
    return boxes.to(device), conf.to(device)


def prefilter(boxes, conf):
    """Official YOLACT: drop priors whose best class score is <= conf_thresh; scores (C, N).

    Same result as the official `cur_scores = conf.t()[1:]; cur_scores[:, keep]`, about 2x
    faster on CPU (row gather of the contiguous (P, C+1) tensor); the (C, N) view is not
    contiguous, as in the model.
    """
    keep = conf[:, 1:].max(dim=1).values > CONF_THRESH  # (P,)
    return boxes[keep], conf[keep, 1:].t()


def nms_ours(boxes, conf):
    b, s = prefilter(boxes, conf)
    return fast_nms(b, s, NMS_THRESH, TOP_K, MAX_DETECTIONS)


def nms_pure(boxes, conf):
    b, s = prefilter(boxes, conf)
    return fast_nms_pytorch(b, s, NMS_THRESH, TOP_K, MAX_DETECTIONS)


def nms_torchvision(boxes, conf):
    """Standard NMS per class (torchvision.ops.batched_nms) on the same top-200-per-class candidates."""
    b, s = prefilter(boxes, conf)
    k = min(TOP_K, s.shape[1])
    top_scores, top_idx = s.topk(k, dim=1)  # (C, k)
    classes = torch.arange(s.shape[0], device=s.device)[:, None].expand(-1, k).reshape(-1)
    flat_idx = top_idx.reshape(-1)
    flat_scores = top_scores.reshape(-1)
    keep = torchvision.ops.batched_nms(b[flat_idx], flat_scores, classes, NMS_THRESH)[:MAX_DETECTIONS]
    return flat_idx[keep], classes[keep], flat_scores[keep]


def time_fn(fn, args, device, warmup, iters):
    for _ in range(warmup):
        fn(*args)
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(*args)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--iters", type=int, default=30, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--threads", default=None,
        help="torch.set_num_threads value(s), comma-separated for several tables, e.g. 1,2 (default: torch's)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    thread_counts = [int(v) for v in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    runs = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        runs.append(run_benchmarks(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs if len(runs) > 1 else runs[0], f, indent=2)
        print(f"wrote {args.json}")


def run_benchmarks(args):
    """One table at the current torch.get_num_threads(); returns {"env": ..., "results": [...]}."""
    device = args.device
    backends = backend_info()
    ours_backend = {op: backends[op][device] for op in ("fast_nms", "crop_masks")}

    boxes, conf = make_detection_load(device)
    survivors = int(prefilter(boxes, conf)[0].shape[0])
    # the compiled op and the pure path must agree before they are compared on speed
    ours, pure = nms_ours(boxes, conf), nms_pure(boxes, conf)
    assert all(torch.equal(a, b) for a, b in zip(ours, pure)), "fast_nms kernel and pure path disagree"

    rows = []

    def add(case, path, ms, ref_ms):
        rows.append({"case": case, "path": path, "median_ms": ms, "vs_ours": ms / ref_ms})

    case = f"fast_nms P={NUM_PRIORS} C={NUM_CLASSES} conf>{CONF_THRESH} ({survivors} pass) top{TOP_K} det{MAX_DETECTIONS}"
    t_ours = time_fn(nms_ours, (boxes, conf), device, args.warmup, args.iters)
    add(case, f"ours ({ours_backend['fast_nms']})", t_ours, t_ours)
    add(case, "pure pytorch", time_fn(nms_pure, (boxes, conf), device, args.warmup, args.iters), t_ours)
    add(case, "torchvision batched_nms", time_fn(nms_torchvision, (boxes, conf), device, args.warmup, args.iters), t_ours)

    g = torch.Generator().manual_seed(1)
    for size in (138, 550):
        masks = torch.rand(100, size, size, generator=g).to(device)
        corners = torch.rand(100, 4, generator=g)
        mask_boxes = torch.cat([corners[:, :2] * 0.7, corners[:, :2] * 0.7 + corners[:, 2:] * 0.3], 1).to(device)
        assert torch.equal(crop_masks(masks, mask_boxes), crop_masks_pytorch(masks, mask_boxes))
        case = f"crop_masks 100x{size}x{size}"
        t_ours = time_fn(crop_masks, (masks, mask_boxes), device, args.warmup, args.iters)
        add(case, f"ours ({ours_backend['crop_masks']})", t_ours, t_ours)
        add(case, "pure pytorch", time_fn(crop_masks_pytorch, (masks, mask_boxes), device, args.warmup, args.iters), t_ours)

    env = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "iters": args.iters,
        "warmup": args.warmup,
        "backends": backends,
    }
    print(f"device={env['device']} torch={env['torch']} torchvision={env['torchvision']} "
          f"torch.set_num_threads({env['torch_num_threads']}) warmup={args.warmup} median of {args.iters}")
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  {'path':<26} {'median ms':>10} {'x ours':>8}")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['path']:<26} {r['median_ms']:>10.3f} {r['vs_ours']:>8.2f}")
    print()
    return {"env": env, "results": rows}


if __name__ == "__main__":
    main()
