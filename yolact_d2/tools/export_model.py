"""Export a YOLACT / YOLACT++ model (resize + network + NMS + mask assembly) for deployment.

    python tools/export_model.py --config configs/yolact/yolact_R_50_FPN_550.py \\
        --weights yolact_R_50_FPN_550.pth --output yolact_r50.onnx
    python tools/export_model.py ... --format torchscript --output yolact_r50.ts
    python tools/export_model.py ... --format torch_export --output yolact_r50.pt2
    python tools/export_model.py ... --verify input.jpg     # compare with the PyTorch Predictor

The exported graph takes "images" (B, 3, H, W) uint8 BGR (batch, height and width dynamic; one size
per call) and returns boxes (B, D, 4) pixels, scores (B, D), classes (B, D) (-1 = padding),
masks (B, D, H, W) bool and num_detections (B,), D = max_detections (100), and for YOLACT++
mask_scores (B, D). ONNX: opset 18 (19 for YOLACT++: DeformConv), run it with
yolact_d2.deploy.onnx.OnnxPredictor or any onnxruntime session. Every post-processing setting
(Fast NMS, class-agnostic, standard NMS) exports; "shortest_edge" models export for one image
size (--sample-size). Batch norms are folded into the convs before export.

A YolactEdge video config (configs/yolact_edge/yolact_edge_vid_*.py) exports as two ONNX graphs
(yolact_d2.deploy.video_export), OUTPUT with .keyframe / .warped before its extension:

    python tools/export_model.py --config configs/yolact_edge/yolact_edge_vid_R_50_FPN_550.py \
        --weights edge_vid_r50.pth --output edge.onnx --verify frame.jpg
    # -> edge.keyframe.onnx (image -> detections + state_p4, state_p5, state_flow_feature)
    #    edge.warped.onnx   (image + that state -> detections + flow_current, flow)

--verify then checks the keyframe graph on the image and the non-keyframe graph on the image
shifted by a few pixels (warped from the keyframe's state) against the PyTorch model: the same
detections by `yolact_d2.deploy.agreement` (rows matched by class, score, mask and box; scores within
1e-4, mask IoU >= 0.99, boxes within 1 px; every reference row must be matched: no allowance for
ties at the max_detections cut, as before the shared matcher).
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

from yolact_d2.deploy.agreement import compare_detections

FORMATS = ("onnx", "torchscript", "torch_export")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="yolact_d2 LazyConfig file or model-zoo name")
    p.add_argument("--weights", default=None, help="checkpoint (yolact_d2 or official YOLACT); default: random init")
    p.add_argument("--output", required=True, help="file to write (.onnx / .ts / .pt2)")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    p.add_argument("--sample-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                   help="image size used to record the graph (any size works afterwards)")
    p.add_argument("--static-size", action="store_true", help="ONNX: fix height/width to --sample-size")
    p.add_argument("--verify", default=None, metavar="IMAGE",
                   help="run the exported model and the PyTorch Predictor on this image and compare")
    p.add_argument("--opts", nargs="*", default=[], help="LazyConfig overrides key=value")
    return p.parse_args(argv)


def video_paths(output: str):
    """OUTPUT -> (its keyframe graph's path, its non-keyframe graph's path)."""
    root, ext = os.path.splitext(output)
    return f"{root}.keyframe{ext or '.onnx'}", f"{root}.warped{ext or '.onnx'}"


def export_video(args, model, image) -> int:
    """Both YolactEdge graphs; with an --verify image, each against the model's inference_video."""
    from yolact_d2.deploy.video_export import OnnxVideoModel, export_video_onnx, shifted

    if args.format != "onnx":
        print(f"error: YolactEdge video models export to ONNX only (two graphs), not --format {args.format}.",
              file=sys.stderr)
        return 1
    start = time.perf_counter()
    paths = export_video_onnx(model, *video_paths(args.output), opset=args.opset, sample_size=tuple(args.sample_size),
                              dynamic_size=not args.static_size)
    for path in paths:
        print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB, onnx)")
    print(f"exported in {time.perf_counter() - start:.1f} s")
    if image is None:
        return 0
    runner = OnnxVideoModel(*paths)
    frames = {"keyframe": image, "warped": shifted(image)}
    inputs = {kind: [{"image": torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))), "height": f.shape[0],
                      "width": f.shape[1]}] for kind, f in frames.items()}
    with torch.no_grad():
        want_key, state = model.inference_video(inputs["keyframe"], None, keyframe=True)
        want_warped, _ = model.inference_video(inputs["warped"], state, keyframe=False)
    got_key, onnx_state = runner.keyframe(image)
    got_warped, _ = runner.warped(frames["warped"], onnx_state)
    ok = True
    for kind, got, want in (("keyframe", got_key, want_key), ("warped", got_warped, want_warped)):
        report = compare_detections(got, want[0]["instances"])
        print(f"verify {kind}:", report, "same detections" if report["same"] else "DIFFERENT detections")
        ok = ok and report["same"]
    return 0 if ok else 2


def main(argv=None) -> int:
    args = parse_args(argv)
    import cv2

    from yolact_d2 import Predictor
    from yolact_d2.deploy.onnx import OnnxPredictor, export_onnx, outputs_to_instances
    from yolact_d2.deploy.optimize import fold_batch_norm
    from yolact_d2.deploy.torchscript import export_program, export_torchscript
    from yolact_d2.model_zoo import resolve_config_file

    predictor = Predictor(resolve_config_file(args.config), args.weights, device="cpu", opts=args.opts, optimize=False)
    model = predictor.model
    fold_batch_norm(model)  # leaner graph; same results up to float rounding
    if getattr(model, "is_video_model", False):
        image = cv2.imread(args.verify) if args.verify else None
        if args.verify and image is None:
            print(f"error: cannot read image '{args.verify}'", file=sys.stderr)
            return 1
        return export_video(args, model, image)
    if model.resize_mode != "squash" and args.verify:
        # shortest_edge graphs take the recorded image size only: record at the verify image's size
        image = cv2.imread(args.verify)
        if image is not None:
            args.sample_size = image.shape[:2]
    start = time.perf_counter()
    if args.format == "onnx":
        export_onnx(model, args.output, opset=args.opset, sample_size=tuple(args.sample_size),
                    dynamic_size=not args.static_size)
    elif args.format == "torchscript":
        export_torchscript(model, args.output, sample_size=tuple(args.sample_size))
    else:
        export_program(model, args.output, sample_size=tuple(args.sample_size))
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB, {args.format}) "
          f"in {time.perf_counter() - start:.1f} s")

    if args.verify:
        image = cv2.imread(args.verify)
        if image is None:
            print(f"error: cannot read image '{args.verify}'", file=sys.stderr)
            return 1
        reference = predictor(image)
        if args.format == "onnx":
            exported = OnnxPredictor(args.output)(image)
        else:
            loaded = torch.jit.load(args.output) if args.format == "torchscript" else torch.export.load(args.output).module()
            batch = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
            with torch.no_grad():
                exported = outputs_to_instances(loaded(batch), image.shape[:2])[0]
        report = compare_detections(exported, reference)
        print("verify:", report)
        print("verify: " + ("same detections" if report["same"] else "DIFFERENT detections"))
        return 0 if report["same"] else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
