"""YolactEdge part of tools/benchmark.py: keyframes and non-keyframes, stage by stage, next to YOLACT.

Used by `benchmark.py` when --config is a YolactEdge video model. In one run, round robin, at
batch 1 (video), with the same seeded (or --weights) weights:

* "YOLACT (same backbone)": our Yolact built from the same config (the YolactEdge image path is
  YOLACT v1) with the same weights minus the flow net / SPA, through `Predictor` (optimized);
* "YolactEdge keyframe" / "YolactEdge non-keyframe": `VideoPredictor` forced to a full pass on the
  image and to a warped pass on the image shifted by a few pixels (camera motion), end to end;
* the mean per frame at --keyframe-interval N, (keyframe + (N - 1) x non-keyframe) / N, from the
  medians (the official schedule is fixed, so this is the mean of a real sequence);
* --yolact-config: more YOLACT configs to time beside them (seeded weights).
* --precisions fp32 bf16 int8: every precision's VideoPredictor in the same rounds ("YolactEdge
  int8 keyframe", ...; int8: both network graphs quantized, deploy.video_export, calibrated on
  --calibration, a folder read as one video's frames); the stages are those of the first precision
  (an eager model: fp32 or bf16).

Stages (`EdgeStages`, the same maths as YolactEdge.keyframe_features / warped_features):
keyframe = preprocess, backbone (full bottom-up), fpn_phase1 (+ the flow net's pre-conv kept for
the non-keyframes), rest; non-keyframe = preprocess, partial_backbone (to C3), flow (C3 lateral,
pre-conv, FlowNetMini), warp (P4/P5 warped x scale + bias, P3 rebuilt, SPA), rest. "rest" is the
same work on both: FPN phase 2, protonet, head, Fast NMS, masks.

--schedule-study N (`schedule_study`): the fixed interval against adaptive keyframes
(--study-motion / --study-residual thresholds, gaps up to twice the interval) on N frames of a
camera panning over a synthetic scene at changing speeds; each schedule's keyframe fraction (its
cost) and its mask agreement with the full network run on every frame (the oracle).
"""
import os
import tempfile
from typing import Dict, List

import numpy as np
import torch

from yolact_d2.deploy.video_export import shifted  # the non-keyframe image: a panning camera's next frame

KEYFRAME_STAGES = ("preprocess", "backbone", "fpn_phase1", "rest")
WARPED_STAGES = ("preprocess", "partial_backbone", "flow", "warp", "rest")


class EdgeStages:
    """Runs a YolactEdge video model stage by stage (its own stage methods) to time each."""

    def __init__(self, model, key_inputs: List[Dict], warped_inputs: List[Dict]):
        self.model = model
        self.inputs = {"key": key_inputs, "warped": warped_inputs}
        self.cache: Dict[str, object] = {}

    # keyframe
    def key_preprocess(self):
        self.cache["key_images"] = self.model.preprocess_image(self.inputs["key"], resize=True)

    def key_backbone(self):
        self.cache["key_bottom_up"] = self.model.backbone.bottom_up(self.cache["key_images"].tensor)

    def key_fpn_phase1(self):
        m, images = self.model, self.cache["key_images"]
        merged, laterals = m.backbone.forward_phase1(self.cache["key_bottom_up"])
        d = self.inputs["key"][0]
        self.cache["key_merged"] = merged
        self.cache["state"] = m.keyframe_state(merged, laterals, images.tensor.shape[-2:], (d["height"], d["width"]))

    def key_rest(self):
        feats = self.model.backbone.forward_phase2(self.cache["key_merged"])
        self.cache["key_results"] = self.model.inference_from_features(feats, self.cache["key_images"], self.inputs["key"])

    # non-keyframe (warped from the state the keyframe stages left)
    def warped_preprocess(self):
        self.cache["images"] = self.model.preprocess_image(self.inputs["warped"], resize=True)

    def warped_partial_backbone(self):
        self.cache["c3"] = self.model.partial_c3(self.cache["images"].tensor)

    def warped_flow(self):
        self.cache["lateral"], self.cache["flows"] = self.model.predict_flow(self.cache["c3"], self.cache["state"])

    def warped_warp(self):
        self.cache["merged"] = self.model.transfer_features(self.cache["lateral"], self.cache["flows"], self.cache["state"])

    def warped_rest(self):
        feats = self.model.backbone.forward_phase2(self.cache["merged"])
        self.cache["results"] = self.model.inference_from_features(feats, self.cache["images"], self.inputs["warped"])

    def run(self, timer) -> None:
        for stage in KEYFRAME_STAGES:
            timer.once("key:" + stage, getattr(self, "key_" + stage))
        for stage in WARPED_STAGES:
            timer.once("warped:" + stage, getattr(self, "warped_" + stage))


def build_same_backbone_yolact(args, fp16: bool):
    """Our Yolact from the edge config (same backbone, head, priors) with the edge model's weights
    minus the flow net / SPA, optimized as Predictor does."""
    from detectron2.config import instantiate

    from yolact_d2 import Predictor
    from yolact_d2.modeling import Yolact
    from yolact_d2.predictor import load_model_config, load_weights

    torch.manual_seed(args.seed)  # as build_ours: without --weights, the same random initialisation
    edge = instantiate(load_model_config(args.config, args.opts)[1])  # un-optimized: its state has the norms
    if args.weights:
        load_weights(edge, args.weights)
    state = {k: v for k, v in edge.state_dict().items() if not k.startswith(("flow_net.", "spa."))}
    _, node = load_model_config(args.config, args.opts)
    node._target_ = Yolact
    for key in ("flow_net", "spa"):
        node.pop(key, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "yolact_same_backbone.pth")
        torch.save({"model": state}, path)
        return Predictor(node, path, device=args.device, fp16=fp16)


def video_predictors(args, ours) -> Dict[str, object]:
    """{precision: VideoPredictor} for args.precisions; `ours` (the Predictor of the first one)
    is shared unless it is int8 (an int8 video model is its own two graphs)."""
    from yolact_d2 import VideoPredictor

    interval = args.keyframe_interval
    built = {}
    for i, precision in enumerate(getattr(args, "precisions", None) or [ours.precision]):
        if i == 0 and precision != "int8":
            built[precision] = VideoPredictor.from_predictor(ours, keyframe_interval=interval)
            continue
        torch.manual_seed(args.seed)  # as build_ours: without --weights, the same random initialisation
        extra = {}
        if precision == "int8":
            extra = dict(calibration=getattr(args, "calibration", None), int8_parts=getattr(args, "int8_parts", None))
        built[precision] = VideoPredictor(args.config, args.weights, device=args.device, keyframe_interval=interval,
                                          opts=args.opts, precision=precision, **extra)
    return built


def run_edge(args, ours, image: np.ndarray, fp16: bool) -> Dict:
    """The YolactEdge run (batch 1): contenders (every precision of args.precisions in the same
    rounds), derived interval means, stages. See the module doc."""
    from yolact_d2 import Predictor
    from yolact_d2.tools.benchmark import Timer, _num_detections

    device = torch.device(args.device)
    interval = args.keyframe_interval
    predictors = video_predictors(args, ours)
    names = {p: "YolactEdge" if len(predictors) == 1 else f"YolactEdge {p}" for p in predictors}
    moved = shifted(image)
    yolact = build_same_backbone_yolact(args, fp16)
    contenders = {"YOLACT (same backbone)": lambda: yolact(image)}
    for p, vp in predictors.items():
        contenders[f"{names[p]} keyframe"] = lambda vp=vp: vp(image, keyframe=True)
        contenders[f"{names[p]} non-keyframe"] = lambda vp=vp: vp(moved, keyframe=False)
    vp = next((v for v in predictors.values() if v._int8_video is None), None)  # stages: an eager model
    for cfg in args.yolact_config or []:
        torch.manual_seed(args.seed)
        extra = Predictor(cfg, None, device=args.device, opts=[o for o in args.opts if o.startswith("model.input_size")],
                          fp16=fp16)
        contenders[f"YOLACT {os.path.splitext(os.path.basename(cfg))[0]}"] = lambda p=extra: p(image)
    stages = None if args.no_stages or vp is None else EdgeStages(vp.model, [vp._to_input(image)], [vp._to_input(moved)])
    timer = Timer(device)
    counts: Dict[str, int] = {}
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=fp16)
    for it in range(args.warmup + args.iters):
        with torch.inference_mode(), autocast:
            for name, fn in contenders.items():
                counts[name] = _num_detections(timer.once(name, fn))
            if stages is not None:
                stages.run(timer)
        if it < args.warmup:
            timer.clear()

    base = "YOLACT (same backbone)"
    run = {"dtype": "+".join(predictors), "precisions": list(predictors), "batch": 1, "yolact_edge": True,
           "keyframe_interval": interval, "contenders": {}, "stages_ms": {}, "stages_cpu_ms": {},
           "loadavg": [round(v, 2) for v in os.getloadavg()]}
    for name in contenders:
        run["contenders"][name] = {
            "ms": round(timer.median_ms(name), 2), "min_ms": round(timer.min_ms(name), 2),
            "cpu_ms": round(timer.median_cpu_ms(name), 2),
            "samples_ms": [round(1000 * s, 2) for s in timer.samples[name]],
            "detections_first_image": counts[name],
        }
    for p in predictors:
        key, warped = run["contenders"][f"{names[p]} keyframe"], run["contenders"][f"{names[p]} non-keyframe"]
        run["contenders"][f"{names[p]} mean at interval {interval}"] = {
            k: round((key[k] + (interval - 1) * warped[k]) / interval, 2) for k in ("ms", "min_ms", "cpu_ms")
        }
        for r in (key, warped):  # noise: the spread of the rounds
            r["iqr_over_median"] = round(float(np.subtract(*np.percentile(r["samples_ms"], [75, 25]))) / r["ms"], 4)
    for r in run["contenders"].values():
        for k, ratio in (("ms", "over_yolact"), ("min_ms", "over_yolact_min"), ("cpu_ms", "over_yolact_cpu")):
            r[ratio] = round(r[k] / run["contenders"][base][k], 4)
    if stages is not None:
        for kind, names in (("keyframe", KEYFRAME_STAGES), ("non-keyframe", WARPED_STAGES)):
            prefix = "key:" if kind == "keyframe" else "warped:"
            wall = {s: round(timer.median_ms(prefix + s), 2) for s in names}
            cpu = {s: round(timer.median_cpu_ms(prefix + s), 2) for s in names}
            wall["sum"], cpu["sum"] = round(sum(wall.values()), 2), round(sum(cpu.values()), 2)
            run["stages_ms"][kind], run["stages_cpu_ms"][kind] = wall, cpu
        run["stage_detections"] = {"keyframe": len(stages.cache["key_results"][0]["instances"]),
                                   "non-keyframe": len(stages.cache["results"][0]["instances"])}
    return run


def print_edge_run(run: Dict) -> None:
    from tabulate import tabulate

    rows = [[name, r["ms"], r["min_ms"], r["cpu_ms"], f"{r['over_yolact']:.3f}x", f"{r['over_yolact_cpu']:.3f}x",
             r.get("iqr_over_median", ""), r.get("detections_first_image", "")] for name, r in run["contenders"].items()]
    print(f"\n{run['dtype']}, batch 1, YolactEdge keyframe interval {run['keyframe_interval']} (medians; "
          f"load {run.get('loadavg', ['?'])[0]}):")
    print(tabulate(rows, headers=["model", "median ms/frame", "best ms/frame", "CPU ms/frame", "this / YOLACT",
                                  "this / YOLACT (CPU)", "IQR / median", "dets"], tablefmt="github"))
    for kind, wall in run["stages_ms"].items():
        rows = [[s, v, run["stages_cpu_ms"][kind][s]] for s, v in wall.items()]
        print(tabulate(rows, headers=[f"YolactEdge {kind} stage", "wall ms", "CPU ms"], tablefmt="github"))


# ---------------------------------------------------------------------------------- schedules
PAN_SPEEDS = (0, 2, 10, 0, 5)  # px / frame of the panning window, one segment each


def panning_frames(height: int, width: int, num_frames: int, seed: int = 0) -> List[np.ndarray]:
    """A camera panning over a seeded synthetic scene: still, slow, fast, still, medium segments."""
    from yolact_d2.tools.benchmark import synthetic_image

    per = max(1, num_frames // len(PAN_SPEEDS))
    speeds = [PAN_SPEEDS[min(i // per, len(PAN_SPEEDS) - 1)] for i in range(num_frames)]
    offsets = np.cumsum([0] + speeds[:-1])
    canvas = synthetic_image(height + 8, width + int(offsets[-1]) + 8, seed=seed)
    return [np.ascontiguousarray(canvas[4:4 + height, x:x + width]) for x in offsets]


def agreement(got, want, min_score: float = 0.3) -> float:
    """Mean over `want`'s detections (score >= min_score) of the best mask IoU with a `got` detection
    of the same class (1.0 when neither has any): how well a warped frame matches the full network."""
    keep_w, keep_g = want.scores >= min_score, got.scores >= min_score
    wm, wc = want.pred_masks[keep_w], want.pred_classes[keep_w]
    gm, gc = got.pred_masks[keep_g], got.pred_classes[keep_g]
    if len(wm) == 0:
        return 1.0 if len(gm) == 0 else 0.0
    if len(gm) == 0:
        return 0.0
    inter = torch.einsum("ahw,bhw->ab", wm.float(), gm.float())
    union = wm.flatten(1).sum(1, keepdim=True).float() + gm.flatten(1).sum(1).float() - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))  # two empty masks agree
    iou = torch.where(wc[:, None] == gc[None, :], iou, torch.zeros_like(iou))
    return float(iou.max(dim=1).values.mean())


def schedule_study(args, ours, num_frames: int) -> Dict:
    """Fixed interval vs adaptive keyframes on a panning sequence: keyframe fraction (the cost) and
    agreement with the full network run on every frame (the oracle)."""
    from yolact_d2 import VideoPredictor

    frames = panning_frames(*args.image_size, num_frames, seed=args.seed)
    with torch.inference_mode():
        full = VideoPredictor.from_predictor(ours, keyframe_interval=1)
        oracle = [full(f).to("cpu") for f in frames]
        schedules = {f"fixed interval {args.keyframe_interval}": None}
        for m in args.study_motion:
            schedules[f"adaptive max_motion {m:g}"] = {"max_motion": m, "max_interval": 2 * args.keyframe_interval}
        for r in args.study_residual:
            schedules[f"adaptive max_residual {r:g}"] = {"max_residual": r, "max_interval": 2 * args.keyframe_interval}
        rows = {}
        for name, adaptive in schedules.items():
            vp = VideoPredictor.from_predictor(ours, keyframe_interval=args.keyframe_interval, adaptive=adaptive)
            scores, keys, motions = [], [], []
            for f, want in zip(frames, oracle):
                got = vp(f).to("cpu")
                keys.append(vp.last_was_keyframe)
                scores.append(agreement(got, want))
                motions.append(vp.last_measures.get("motion"))
            warped = [s for s, k in zip(scores, keys) if not k]
            rows[name] = {"keyframe_fraction": round(sum(keys) / len(keys), 4),
                          "agreement": round(float(np.mean(scores)), 4),
                          "agreement_non_keyframes": round(float(np.mean(warped)), 4) if warped else None,
                          "keyframes": [i for i, k in enumerate(keys) if k]}
    return {"frames": num_frames, "pan_speeds": list(PAN_SPEEDS), "schedules": rows}


def print_study(study: Dict) -> None:
    from tabulate import tabulate

    rows = [[n, r["keyframe_fraction"], r["agreement"], r["agreement_non_keyframes"],
             " ".join(map(str, r["keyframes"][:16])) + (" ..." if len(r["keyframes"]) > 16 else "")]
            for n, r in study["schedules"].items()]
    print(f"\nkeyframe schedules on {study['frames']} panning frames (speeds {study['pan_speeds']} px/frame):")
    print(tabulate(rows, headers=["schedule", "keyframe fraction", "mask agreement", "on non-keyframes", "keyframes"],
                   tablefmt="github"))
