"""Draw YOLACT detections (masks, boxes, class names, scores) on images and videos.

    python tools/demo.py --config configs/yolact/yolact_R_50_FPN_550.py --weights model.pth \\
        --input photo.jpg "images/*.png" some_folder/ clip.mp4 --output out/
    python tools/demo.py ... --input photo.jpg --output drawn.jpg --confidence-threshold 0.5
    python tools/demo.py ... --opts model.post_processor.top_k=100 model.input_size=400

Inputs may be image files, folders (their images and videos, sorted), globs and video files
(anything OpenCV reads). --output is a file when there is one input, else a folder (created);
without --output the detections are only listed. Drawing uses Detectron2's Visualizer with the
class names of the config's test dataset (COCO names for 80-class models). Videos get a progress
bar with frames per second and are written as .mp4 (mp4v) at the input frame rate.
"""
import argparse
import glob
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="yolact_d2 LazyConfig file")
    p.add_argument("--weights", default=None, help="checkpoint (yolact_d2 or official YOLACT)")
    p.add_argument("--input", nargs="+", required=True, help="images, folders, globs or videos")
    p.add_argument("--output", default=None, help="output file (one input) or folder")
    p.add_argument("--confidence-threshold", type=float, default=0.3, help="draw detections with score > this")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--max-frames", type=int, default=0, help="stop videos after this many frames (0: all)")
    p.add_argument("--opts", nargs="*", default=[], help="LazyConfig overrides key=value")
    return p.parse_args(argv)


def expand_inputs(items):
    """Files, folders and globs -> sorted list of (path, "image"|"video")."""
    found = []
    for item in items:
        if os.path.isdir(item):
            paths = sorted(os.path.join(item, f) for f in os.listdir(item))
            paths = [f for f in paths if f.lower().endswith(IMAGE_EXTS + VIDEO_EXTS)]
            if not paths:
                raise SystemExit(f"demo: folder '{item}' has no image or video files ({', '.join(IMAGE_EXTS + VIDEO_EXTS)}).")
        elif any(c in item for c in "*?["):
            paths = sorted(glob.glob(item, recursive=True))
            if not paths:
                raise SystemExit(f"demo: the pattern '{item}' matches no file.")
        elif os.path.isfile(item):
            paths = [item]
        else:
            raise SystemExit(f"demo: input '{item}' does not exist.")
        for path in paths:
            found.append((path, "video" if path.lower().endswith(VIDEO_EXTS) else "image"))
    return found


def output_path(output, inputs, path, kind):
    """Where to write the drawing of `path` (None: do not write)."""
    if output is None:
        return None
    as_folder = len(inputs) > 1 or os.path.isdir(output) or output.endswith(os.sep) or not os.path.splitext(output)[1]
    if not as_folder:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        return output
    os.makedirs(output, exist_ok=True)
    name = os.path.basename(path)
    if kind == "video":
        name = os.path.splitext(name)[0] + ".mp4"
    return os.path.join(output, name)


def describe(instances, class_names):
    parts = [f"{class_names[c]} {s:.2f}" for c, s in zip(instances.pred_classes.tolist(), instances.scores.tolist())]
    return ", ".join(parts[:10]) + (" ..." if len(parts) > 10 else "")


def run_image(predictor, path, out_path):
    import cv2
    from detectron2.utils.visualizer import ColorMode, Visualizer

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"demo: OpenCV cannot read the image '{path}'.")
    start = time.perf_counter()
    instances = predictor(image).to("cpu")
    elapsed = time.perf_counter() - start
    names = predictor.metadata.thing_classes
    print(f"{path}: {len(instances)} detections in {elapsed:.2f} s: {describe(instances, names)}")
    if out_path:
        vis = Visualizer(image[:, :, ::-1], predictor.metadata, instance_mode=ColorMode.IMAGE)
        drawn = vis.draw_instance_predictions(instances).get_image()[:, :, ::-1]
        if not cv2.imwrite(out_path, drawn):
            raise SystemExit(f"demo: cannot write '{out_path}' (unknown image extension?).")
        print(f"  -> {out_path}")


def run_video(predictor, path, out_path, max_frames=0):
    import cv2
    import tqdm
    from detectron2.utils.video_visualizer import VideoVisualizer
    from detectron2.utils.visualizer import ColorMode

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise SystemExit(f"demo: OpenCV cannot open the video '{path}'.")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if max_frames:
        total = min(total, max_frames) if total else max_frames
    writer = None
    if out_path:
        writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise SystemExit(f"demo: cannot write the video '{out_path}'.")
    visualizer = VideoVisualizer(predictor.metadata, ColorMode.IMAGE)
    frames, start = 0, time.perf_counter()
    bar = tqdm.tqdm(total=total, unit="frame", desc=os.path.basename(path), dynamic_ncols=True)
    try:
        while not max_frames or frames < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            instances = predictor(frame).to("cpu")
            frames += 1
            if writer is not None:
                drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances).get_image()[:, :, ::-1]
                writer.write(np.ascontiguousarray(drawn))
            bar.update(1)
            bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.2f}", dets=len(instances))
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    elapsed = time.perf_counter() - start
    print(f"{path}: {frames} frames in {elapsed:.1f} s ({frames / max(elapsed, 1e-9):.2f} frames/s incl. drawing)")
    if out_path:
        print(f"  -> {out_path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    inputs = expand_inputs(args.input)
    from yolact_d2 import Predictor

    predictor = Predictor(args.config, args.weights, device=args.device, opts=args.opts,
                          score_threshold=args.confidence_threshold)
    for path, kind in inputs:
        out = output_path(args.output, inputs, path, kind)
        if kind == "video":
            run_video(predictor, path, out, args.max_frames)
        else:
            run_image(predictor, path, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
