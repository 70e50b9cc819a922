"""Every model config in configs/ exported to ONNX and checked against PyTorch in onnxruntime.

    .venv/bin/python scripts/check_all_exports.py                    # all configs (~15 min on 2 cores)
    .venv/bin/python scripts/check_all_exports.py --only regnet D_53 # configs whose path contains a word
    .venv/bin/python scripts/check_all_exports.py --json out.json    # the table as JSON too

A config is every .py under configs/ (configs/common/ holds pieces, not experiments) that defines a
`model`. Each is built at its own network input size with the seeded weights of the test suite
(tests/inference_fixtures.py: no downloads), its batch norms are folded into a copy, the copy is
exported, and onnxruntime's detections are compared with the PyTorch model's (not folded):

* image models: `export_onnx`, two images in one batch, against `model([...])`;
* YolactEdge video models: `export_video_onnx` (keyframe + non-keyframe graph), a keyframe and 4
  frames warped from its state (a camera panning a few pixels a frame), against `inference_video`.

Same detections = every reference row matched by an exported row of its class with score (and
YOLACT++ mask score) within 1e-4, mask IoU >= 0.99 and box within 1 px; rows are matched by class,
score and mask, not by position (runtimes order near-equal scores differently). When a model fills
max_detections, reference rows within 1e-4 of the cut may be swapped for others of that score
("tie@cut" column). Mask IoU leaves out the pixels whose PyTorch mask probability lies within 1e-6
of the threshold (`with_threshold_pixels`; the IoU over all pixels is shown beside it when lower).
Exit status 0 when every config matches.

Seeded weights, not trained ones: the prior-dependent part of the class logits of a seeded model
spreads by 4e-4 (RegNet, MobileNetV2) to 1e3 (ResNet-101, frozen random BN statistics over 101
layers) depending on the backbone. Below ~1e-3 all scores lie within 1e-4 of each other and float
rounding alone reorders them (which box Fast NMS keeps changes); at 1e3 every score is exactly 1.0.
So the class-logit and box-delta weights are rescaled once, measured on a probe image, to the
spread R50's seeded weights have (std 0.25; `spread_head`): a test-side fix, as trained weights
spread their scores by themselves. Configs already within [0.1, 1] keep the suite's weights.
"""
import argparse
import contextlib
import glob
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # the suite's seeded weights and images
import inference_fixtures as fx  # noqa: E402
from yolact_d2.deploy.agreement import compare_detections as compare  # noqa: E402

MASK_EPS = 1e-6  # mask probabilities this close to the threshold: float rounding decides (16 ulp at 0.5)
IMAGE_SIZE = (120, 160)  # not the network input size: the graph resizes, as the model does
SPREAD_BAND, SPREAD_TARGET = (0.1, 1.0), 0.25
NUM_WARPED = 4


def model_configs(root: str = os.path.join(REPO, "configs")):
    """Every config file under `root` that defines a `model` (configs/common/ excluded)."""
    from detectron2.config import LazyConfig

    found = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, root)
        if rel.split(os.sep)[0] == "common" or os.path.basename(path) == "__init__.py":
            continue
        if "model" in LazyConfig.load(path):
            found.append(path)
    return found


def textured_image(seed: int) -> np.ndarray:
    """The suite's seeded test image (filled circles on a flat background) plus seeded noise: on a
    flat region every position has exactly the same features, so neighbouring priors get exactly
    equal scores and which of them Fast NMS keeps depends on float rounding (seen on DarkNet-53)."""
    image = fx.test_image(*IMAGE_SIZE, seed=seed).astype(np.int16)
    noise = np.random.RandomState(seed).randint(-12, 13, size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def as_input(image: np.ndarray):
    return {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), "height": image.shape[0],
            "width": image.shape[1]}


@torch.no_grad()
def spread_head(model, state, image):
    """Rescale head.cls_score / head.bbox_pred weights in `state` (see the module docstring) so the
    prior-dependent part of their outputs has std SPREAD_TARGET on `image`; returns {name: factor}."""
    model.load_state_dict(state)
    outputs = {}
    hooks = [getattr(model.head, name).register_forward_hook(
        lambda mod, _, out, name=name: outputs.setdefault(name, []).append(out - mod.bias.view(1, -1, 1, 1)))
        for name in ("cls_score", "bbox_pred")]
    try:
        model([as_input(image)])
    finally:
        for hook in hooks:
            hook.remove()
    factors = {}
    for name, outs in outputs.items():
        std = float(torch.cat([o.flatten() for o in outs]).std())
        if not SPREAD_BAND[0] <= std <= SPREAD_BAND[1]:
            factors[name] = SPREAD_TARGET / std
            state[f"head.{name}.weight"] = state[f"head.{name}.weight"] * factors[name]
    model.load_state_dict(state)
    return factors


def with_threshold_pixels(post_processor, infer):
    """infer() -> Instances (a list) of the PyTorch model, each with `near_threshold`: the pixels
    whose mask probability lies within MASK_EPS of mask_threshold (the same model's masks at the
    threshold -/+ MASK_EPS differ there). A pixel 1 ulp from the threshold flips with float rounding
    alone: seen on YolactEdge R34, one pixel at probability 0.50000006 of a 31-pixel mask (IoU 0.968)."""
    wants, threshold = infer(), post_processor.mask_threshold
    try:
        post_processor.mask_threshold = threshold - MASK_EPS
        above_lower = infer()
        post_processor.mask_threshold = threshold + MASK_EPS
        above_upper = infer()
    finally:
        post_processor.mask_threshold = threshold
    for want, lower, upper in zip(wants, above_lower, above_upper):
        assert torch.equal(want.scores, lower.scores) and torch.equal(want.scores, upper.scores)
        want.near_threshold = lower.pred_masks & ~upper.pred_masks
    return wants


def merge(reports):
    """One row from several images / frames: the worst of each figure."""
    return {
        "detections": min(r["detections"] for r in reports), "exported": min(r["exported"] for r in reports),
        "classes_equal": all(r["classes_equal"] for r in reports),
        "tie_at_cut": sum(r["tie_at_cut"] for r in reports),
        "max_score_diff": max(r["max_score_diff"] for r in reports),
        "min_mask_iou": min(r["min_mask_iou"] for r in reports),
        "min_mask_iou_all_pixels": min(r["min_mask_iou_all_pixels"] for r in reports),
        "max_box_diff": max(r["max_box_diff"] for r in reports),
        "same": all(r["same"] for r in reports),
    }


def quiet():
    """The exporter prints its progress steps to stdout: kept out of the table."""
    return contextlib.redirect_stdout(io.StringIO())


def check_image(reference, folded, folder: str):
    from yolact_d2.deploy.onnx import OnnxPredictor, export_onnx

    with quiet():
        path = export_onnx(folded, os.path.join(folder, "model.onnx"), sample_size=IMAGE_SIZE, sample_batch=2)
    images = [textured_image(s) for s in (6, 7)]
    with torch.no_grad():
        wants = with_threshold_pixels(reference.post_processor, lambda: [
            out["instances"] for out in reference([as_input(im) for im in images])])
    gots = OnnxPredictor(path)(images)
    return 1, [compare(g, w, reference.post_processor.max_detections) for g, w in zip(gots, wants)]


def video_frames(image: np.ndarray, count: int):
    """A keyframe and count - 1 frames of a camera panning CAMERA_SHIFT pixels a frame."""
    from yolact_d2.deploy.video_export import CAMERA_SHIFT, shifted

    return [shifted(image, (CAMERA_SHIFT[0] * t, CAMERA_SHIFT[1] * t)) for t in range(count)]


def check_video(reference, folded, folder: str):
    from yolact_d2.deploy.video_export import OnnxVideoModel, export_video_onnx

    with quiet():
        paths = export_video_onnx(folded, os.path.join(folder, "k.onnx"), os.path.join(folder, "w.onnx"),
                                  sample_size=IMAGE_SIZE)
    runner = OnnxVideoModel(*paths)
    reports, state, onnx_state = [], None, None
    with torch.no_grad():
        for t, frame in enumerate(video_frames(textured_image(6), 1 + NUM_WARPED)):
            states = []

            def infer():
                outputs, new_state = reference.inference_video([as_input(frame)], state, keyframe=t == 0)
                states.append(new_state)
                return [outputs[0]["instances"]]

            [want] = with_threshold_pixels(reference.post_processor, infer)
            if t == 0:
                state = states[0]
                got, onnx_state = runner.keyframe(frame)
            else:
                got, _ = runner.warped(frame, onnx_state)
            reports.append(compare(got, want, reference.post_processor.max_detections))
    return 2, reports


def check_config(path: str) -> dict:
    from yolact_d2.deploy.optimize import fold_batch_norm

    start = time.perf_counter()
    state = fx.seeded_state_dict(0, config=path, opts=[])
    reference = fx.build_model([], config=path)
    factors = spread_head(reference, state, textured_image(5))
    folded = fx.build_model([], config=path)
    folded.load_state_dict(state)
    fold_batch_norm(folded)
    video = bool(getattr(reference, "is_video_model", False))
    with tempfile.TemporaryDirectory() as folder:
        graphs, reports = (check_video if video else check_image)(reference, folded, folder)
    row = merge(reports)
    row.update(config=os.path.relpath(path, os.path.join(REPO, "configs")), graphs=graphs,
               input_size=int(reference.input_size), spread={k: float(f"{v:.3g}") for k, v in factors.items()},
               seconds=round(time.perf_counter() - start, 1))
    return row


def print_row(row: dict) -> None:
    if "error" in row:
        print(f"| {row['config']} | - | - | - | - | - | - | FAILED: {row['error']} |", flush=True)
        return
    spread = ", ".join(f"{k} x{v:.3g}" for k, v in row["spread"].items()) or "-"
    mask_iou = f"{row['min_mask_iou']:.4f}"
    if row["min_mask_iou_all_pixels"] < row["min_mask_iou"]:
        mask_iou += f" (all px {row['min_mask_iou_all_pixels']:.4f})"
    print(f"| {row['config']} | {row['input_size']} | {row['graphs']} | {row['detections']} "
          f"| {row['classes_equal']} (tie@cut {row['tie_at_cut']}) | {row['max_score_diff']:.2e} "
          f"| {mask_iou} | {row['max_box_diff']:.2f} | {spread} | {row['seconds']:.0f} s "
          f"| {'same' if row['same'] else 'DIFFERENT'} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="check configs whose path contains one of these")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # the exporter's and the datasets' chatter; failures still raise
    configs = [p for p in model_configs() if not args.only or any(w.lower() in p.lower() for w in args.only)]
    if not configs:
        print(f"error: no config in configs/ matches {args.only}", file=sys.stderr)
        return 1
    print("| config | input | graphs | detections (min) | classes equal | max score diff | min mask IoU "
          "| max box diff | head spread | time | result |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for path in configs:
        try:
            row = check_config(path)
        except Exception as exc:  # one config's failure is a row of the table, not the end of the sweep
            row = {"config": os.path.relpath(path, os.path.join(REPO, "configs")), "same": False,
                   "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
        print_row(row)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    failed = [r["config"] for r in rows if not r["same"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} configs: same detections in onnxruntime"
          + (f"; different: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
