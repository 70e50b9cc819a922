"""Draw YOLACT detections (masks, boxes, class names, scores) on images, videos and cameras.

Detectron2's demo flags work (--config-file, --input, --video-input, --webcam, --output,
--confidence-threshold, --opts):

    python tools/demo.py --config-file configs/yolact/yolact_R_50_FPN_550.py --weights model.pth \\
        --input photo.jpg "images/*.png" some_folder/ clip.mp4 --output out/
    python tools/demo.py --config-file yolact/yolact_R_50_FPN_550.py --video-input clip.mp4 --output out.mp4 \\
        --opts MODEL.WEIGHTS model.pth model.post_processor.top_k=100
    python tools/demo.py ... --webcam            # camera 0; --webcam 2, or a stream URL (rtsp://..., http://...)

--config-file (alias --config) is a LazyConfig file or a model-zoo name (yolact_d2.model_zoo).
Inputs may be image files, folders (their images and videos, sorted), globs and video files
(anything OpenCV reads). --output is a file when there is one input, else a folder (created);
without --output the detections are only listed. --opts takes key=value LazyConfig overrides and
Detectron2-style KEY VALUE pairs, where MODEL.WEIGHTS and MODEL.DEVICE set --weights / --device.
A file that cannot be read is reported and skipped; the others are processed and the exit status
is 1 at the end. Drawing uses Detectron2's Visualizer with the class names of the config's test
dataset (COCO names for 80-class models). Videos get a progress bar with frames per second and
are written as .mp4 (mp4v) at the input frame rate.

With a YolactEdge video config (configs/yolact_edge/yolact_edge_vid_*.py) videos and cameras run
through yolact_d2.VideoPredictor: the full network on every --keyframe-interval-th frame (5, as
official), warped keyframe features in between (--adaptive-max-motion / --adaptive-max-residual
add the adaptive rule). The progress bar shows each frame's fps and kind, the drawing is labelled
KEYFRAME / warped with its fps, and the summary lists the keyframes and the mean time of each kind.

--precision int8 (CPU) calibrates on --calibration (a folder of images, or a video file's first 100
frames; default: 100 images of the config's training set) and caches the int8 model next to the
weights. With a YolactEdge video config it builds VideoPredictor(precision="int8"): the int8
keyframe and non-keyframe graphs (a calibration folder or video is read as one video's frames).
"""
import argparse
import contextlib
import glob
import os
import sys
import tempfile
import time
from typing import List, NamedTuple, Optional, Tuple, Union

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
# Detectron2 (yacs) keys of its demo's --opts that mean a demo argument here.
YACS_ARGUMENTS = {"MODEL.WEIGHTS": "weights", "MODEL.DEVICE": "device"}


class Source(NamedTuple):
    path: Union[str, int]  # a file, a camera index or a stream URL
    kind: str  # "image" | "video" | "webcam"
    name: str  # file name of its drawing in an --output folder


class InputError(Exception):
    """One input that cannot be processed: reported, skipped, and the exit status becomes 1."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", "--config", dest="config_file", required=True, metavar="FILE",
                   help="yolact_d2 LazyConfig file, or a model-zoo name such as yolact/yolact_R_50_FPN_550.py")
    p.add_argument("--weights", default=None, help="checkpoint (yolact_d2 or official YOLACT); also --opts MODEL.WEIGHTS")
    p.add_argument("--input", nargs="+", default=[], help="images, folders, globs or videos")
    p.add_argument("--video-input", default=None, help="a video file")
    p.add_argument("--webcam", nargs="?", const="0", default=None, metavar="INDEX|URL",
                   help="read a camera (index, default 0) or a stream URL OpenCV can open")
    p.add_argument("--output", default=None, help="output file (one input) or folder")
    p.add_argument("--confidence-threshold", type=float, default=0.3, help="draw detections with score > this")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available); also --opts MODEL.DEVICE")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "int8"),
                   help="network precision (bf16: CPU with AVX512-BF16/AMX, or CUDA; fp16: CUDA; int8: CPU)")
    p.add_argument("--calibration", default=None, metavar="FOLDER|VIDEO",
                   help="--precision int8: calibrate on a folder of images (the first 100, name order; for a "
                        "YolactEdge video config the frames of one video) or a video file (its first 100 frames); "
                        "default: 100 images of the config's training set")
    p.add_argument("--max-frames", type=int, default=0, help="stop videos and cameras after this many frames (0: all)")
    p.add_argument("--keyframe-interval", type=int, default=5,
                   help="YolactEdge video configs: full network every N-th frame, warped features between")
    p.add_argument("--adaptive-max-motion", type=float, default=None, metavar="PX",
                   help="YolactEdge video: also take a keyframe when the predicted motion exceeds PX input pixels")
    p.add_argument("--adaptive-max-residual", type=float, default=None, metavar="R",
                   help="YolactEdge video: also take a keyframe when the relative warp residual exceeds R")
    p.add_argument("--opts", nargs="*", default=[],
                   help="config overrides: key=value (LazyConfig) or Detectron2-style KEY VALUE pairs")
    args = p.parse_args(argv)
    if not args.input and args.video_input is None and args.webcam is None:
        p.error("nothing to do: give --input, --video-input or --webcam.")
    if args.calibration is not None and args.precision != "int8":
        p.error(f"--calibration applies to --precision int8 (got --precision {args.precision}).")
    return args


def split_opts(opts: List[str]) -> Tuple[List[str], dict]:
    """--opts -> (LazyConfig key=value overrides, {"weights": ..., "device": ...} from MODEL.WEIGHTS / MODEL.DEVICE)."""
    overrides, arguments, i = [], {}, 0
    while i < len(opts):
        if "=" in opts[i]:
            key, value = opts[i].split("=", 1)
            i += 1
        elif i + 1 < len(opts):
            key, value = opts[i], opts[i + 1]
            i += 2
        else:
            raise SystemExit(f"demo: --opts '{opts[i]}' has no value: give key=value or KEY VALUE pairs.")
        if key in YACS_ARGUMENTS:
            arguments[YACS_ARGUMENTS[key]] = value
        else:
            overrides.append(f"{key}={value}")
    return overrides, arguments


def merge_argument(args, name: str, from_opts: Optional[str]) -> Optional[str]:
    given = getattr(args, name)
    if from_opts is not None and given is not None and from_opts != given:
        yacs = next(k for k, v in YACS_ARGUMENTS.items() if v == name)
        raise SystemExit(f"demo: --{name} '{given}' and --opts {yacs} '{from_opts}' disagree; give one of them.")
    return from_opts if from_opts is not None else given


def expand_inputs(items) -> List[Source]:
    """Files, folders and globs -> sorted sources. A path that does not exist is an error at once."""
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
            found.append(file_source(path))
    return found


def file_source(path: str, kind: Optional[str] = None) -> Source:
    kind = kind or ("video" if path.lower().endswith(VIDEO_EXTS) else "image")
    name = os.path.basename(path)
    return Source(path, kind, os.path.splitext(name)[0] + ".mp4" if kind == "video" else name)


def webcam_source(spec: str) -> Source:
    """--webcam 0 -> camera 0; anything else is a stream URL (or any path OpenCV opens)."""
    if spec.isdigit():
        return Source(int(spec), "webcam", f"webcam{spec}.mp4")
    stem = os.path.splitext(os.path.basename(spec.rstrip("/")))[0] or "stream"
    return Source(spec, "webcam", f"{stem}.mp4")


def check_output(output: Optional[str], sources: List[Source]) -> None:
    """Several inputs need an --output folder; one input's --output file must suit its kind."""
    if output is None or os.path.isdir(output) or output.endswith(os.sep):
        return
    ext = os.path.splitext(output)[1].lower()
    if len(sources) > 1 and ext in IMAGE_EXTS + VIDEO_EXTS:
        shown = ", ".join(str(s.path) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
        raise SystemExit(
            f"demo: --output '{output}' looks like a file name, but there are {len(sources)} inputs ({shown}): "
            f"give a folder, e.g. --output {os.path.splitext(output)[0]}/"
        )
    if len(sources) == 1:
        moving = sources[0].kind != "image"
        if moving and ext in IMAGE_EXTS or not moving and ext in VIDEO_EXTS:
            want = "a video file (.mp4)" if moving else "an image file (.png, .jpg)"
            raise SystemExit(f"demo: --output '{output}' does not suit the {sources[0].kind} input '{sources[0].path}': "
                             f"give {want} or a folder.")


def output_path(output, sources, source: Source):
    """Where to write the drawing of `source` (None: do not write)."""
    if output is None:
        return None
    as_folder = len(sources) > 1 or os.path.isdir(output) or output.endswith(os.sep) or not os.path.splitext(output)[1]
    if not as_folder:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        return output
    os.makedirs(output, exist_ok=True)
    return os.path.join(output, source.name)


def describe(instances, class_names):
    parts = [f"{class_names[c]} {s:.2f}" for c, s in zip(instances.pred_classes.tolist(), instances.scores.tolist())]
    return ", ".join(parts[:10]) + (" ..." if len(parts) > 10 else "")


def run_image(predictor, path, out_path):
    import cv2
    from detectron2.utils.visualizer import ColorMode, Visualizer

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"OpenCV cannot read the image '{path}' (damaged, or not an image?)")
    start = time.perf_counter()
    # a VideoPredictor (int8 YolactEdge video config): a still is its own keyframe, never warped
    still = {"keyframe": True} if hasattr(predictor, "last_was_keyframe") else {}
    instances = predictor(image, **still).to("cpu")
    elapsed = time.perf_counter() - start
    names = predictor.metadata.thing_classes
    print(f"{path}: {len(instances)} detections in {elapsed:.2f} s: {describe(instances, names)}")
    if out_path:
        vis = Visualizer(image[:, :, ::-1], predictor.metadata, instance_mode=ColorMode.IMAGE)
        drawn = vis.draw_instance_predictions(instances).get_image()[:, :, ::-1]
        if not cv2.imwrite(out_path, drawn):
            raise InputError(f"cannot write '{out_path}' (unknown image extension, or a read-only folder?)")
        print(f"  -> {out_path}")


def open_capture(source: Source):
    import cv2

    cap = cv2.VideoCapture(source.path)
    if cap.isOpened():
        return cap
    if isinstance(source.path, int):
        raise InputError(f"cannot open camera {source.path} (is a camera attached, and is /dev/video{source.path} "
                         "readable? --webcam takes a camera index or a stream URL)")
    what = "stream" if source.kind == "webcam" else "video"
    raise InputError(f"OpenCV cannot open the {what} '{source.path}'")


def run_video(predictor, source: Source, out_path, max_frames=0):
    """The frame loop for video files, cameras and streams: predict, draw, write, report fps."""
    import cv2
    import tqdm
    from detectron2.utils.video_visualizer import VideoVisualizer
    from detectron2.utils.visualizer import ColorMode

    cap = open_capture(source)
    label = source.path if isinstance(source.path, str) else f"camera {source.path}"
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if source.kind == "video" else 0
    total = total if total > 0 else None  # cameras and streams: unknown (until --max-frames or the end)
    if max_frames:
        total = min(total, max_frames) if total else max_frames
    writer = None
    if out_path:
        writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            cap.release()
            raise InputError(f"cannot write the video '{out_path}'")
    visualizer = VideoVisualizer(predictor.metadata, ColorMode.IMAGE)
    video_model = hasattr(predictor, "last_was_keyframe")  # a VideoPredictor (YolactEdge video config)
    if video_model:
        predictor.reset()  # each video starts with a keyframe
    frame_times = {True: [], False: []}  # keyframe? -> seconds per frame (the network alone)
    keyframes = []
    frames, start = 0, time.perf_counter()
    bar = tqdm.tqdm(total=total, unit="frame", desc=os.path.basename(str(label)), dynamic_ncols=True)
    try:
        while not max_frames or frames < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            tick = time.perf_counter()
            instances = predictor(frame).to("cpu")
            seconds = time.perf_counter() - tick
            is_key = predictor.last_was_keyframe if video_model else True
            frame_times[is_key].append(seconds)
            if is_key and video_model:
                keyframes.append(frames)
            frames += 1
            if writer is not None:
                drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances).get_image()[:, :, ::-1]
                drawn = np.ascontiguousarray(drawn)
                if video_model:
                    mark_frame(drawn, is_key, seconds)
                writer.write(drawn)
            bar.update(1)
            postfix = {"fps": f"{frames / (time.perf_counter() - start):.2f}", "frame_fps": f"{1 / max(seconds, 1e-9):.2f}",
                       "dets": len(instances)}
            if video_model:
                postfix["frame"] = "key" if is_key else "warped"
            bar.set_postfix(postfix)
    except KeyboardInterrupt:  # a camera runs until stopped: keep what was written
        print(f"{label}: stopped", file=sys.stderr)
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    elapsed = time.perf_counter() - start
    if frames == 0:
        raise InputError(f"no frame could be read from {label}")
    print(f"{label}: {frames} frames in {elapsed:.1f} s ({frames / max(elapsed, 1e-9):.2f} frames/s incl. drawing)")
    if video_model:
        print(video_summary(keyframes, frame_times))
    if out_path:
        print(f"  -> {out_path}")


def mark_frame(drawn: np.ndarray, is_key: bool, seconds: float) -> None:
    """Top-left label on a drawn video frame: KEYFRAME (full network) or warped, and its fps."""
    import cv2

    text = f"{'KEYFRAME' if is_key else 'warped'} {1 / max(seconds, 1e-9):.1f} fps"
    color = (0, 0, 255) if is_key else (255, 255, 255)
    scale = max(0.35, min(drawn.shape[:2]) / 800)  # readable on 128 px test clips and on 1080p
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(drawn, (0, 0), (w + 6, h + base + 6), (0, 0, 0), -1)  # dark box: readable on any frame
    cv2.putText(drawn, text, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def video_summary(keyframes: List[int], frame_times: dict) -> str:
    """'N keyframes (frames 0, 5, ...); keyframe X ms (Y fps), warped ...' for a YolactEdge video."""
    shown = ", ".join(map(str, keyframes[:20])) + (" ..." if len(keyframes) > 20 else "")
    parts = [f"  {len(keyframes)} keyframes (frames {shown})"]
    for is_key, name in ((True, "keyframe"), (False, "warped")):
        times = frame_times[is_key]
        if times:
            mean = sum(times) / len(times)
            parts.append(f"{name} {1000 * mean:.1f} ms ({1 / max(mean, 1e-9):.2f} fps, {len(times)} frames)")
    return "; ".join(parts)


def adaptive_rule(args):
    """--adaptive-max-motion / --adaptive-max-residual as VideoPredictor's `adaptive` (None: fixed interval)."""
    if args.adaptive_max_motion is None and args.adaptive_max_residual is None:
        return None
    return {"max_motion": args.adaptive_max_motion, "max_residual": args.adaptive_max_residual}


def video_predictor(predictor, args):
    """A VideoPredictor on the same model when the config is a YolactEdge video model, else None
    (an int8 video config is already one: build_predictor made its two graphs)."""
    from yolact_d2 import VideoPredictor

    if isinstance(predictor, VideoPredictor):
        return predictor
    if not getattr(predictor.model, "is_video_model", False):
        return None
    try:
        return VideoPredictor.from_predictor(predictor, keyframe_interval=args.keyframe_interval,
                                             adaptive=adaptive_rule(args))
    except ValueError as e:
        raise SystemExit(f"demo: {e}") from None


def is_video_config(cfg) -> bool:
    """Whether the config's model has a flow net (YolactEdge.is_video_model), read from the config
    so that int8 builds the video graphs without first building the image graph."""
    return cfg.model.get("flow_net") is not None




@contextlib.contextmanager
def calibration_folder(path: Optional[str]):
    """--calibration as the folder the int8 Predictors read: a folder as it is, a video file as its
    first DEFAULT_CALIBRATION_IMAGES frames written to a temporary folder (PNG, name order = frame order;
    the same frames give the same bytes, so the int8 cache next to the weights is reused)."""
    if path is None or os.path.isdir(path):
        yield path
        return
    if not os.path.isfile(path):
        raise SystemExit(f"demo: --calibration '{path}' does not exist; give a folder of images or a video file.")
    if not path.lower().endswith(VIDEO_EXTS):
        raise SystemExit(f"demo: --calibration '{path}' is a file but not a video ({', '.join(VIDEO_EXTS)}); "
                         "give a video file or a folder of images.")
    import cv2

    from yolact_d2.deploy.quantize import DEFAULT_CALIBRATION_IMAGES

    cap = cv2.VideoCapture(path)
    with tempfile.TemporaryDirectory(prefix="yolact_demo_calib_") as folder:
        frames = 0
        while frames < DEFAULT_CALIBRATION_IMAGES:
            ok, frame = cap.read()
            if not ok:
                break
            cv2.imwrite(os.path.join(folder, f"frame_{frames:05d}.png"), frame)
            frames += 1
        cap.release()
        if frames == 0:
            raise SystemExit(f"demo: --calibration: OpenCV cannot read a frame of the video '{path}'.")
        print(f"demo: int8 calibration on {frames} frames of {path}")
        yield folder


def build_predictor(args):
    """The Predictor for the config, --opts (both styles) and --weights / --device; with --precision
    int8 and a YolactEdge video config, the int8 VideoPredictor (its keyframe and non-keyframe graphs)."""
    from detectron2.config import LazyConfig

    from yolact_d2 import Predictor, VideoPredictor
    from yolact_d2.engine import UnknownConfigKeyError, apply_overrides
    from yolact_d2.model_zoo import ConfigNotFoundError, resolve_config_file

    overrides, from_opts = split_opts(args.opts)
    weights = merge_argument(args, "weights", from_opts.get("weights"))
    device = merge_argument(args, "device", from_opts.get("device"))
    try:
        config_file = resolve_config_file(args.config_file)
        cfg = apply_overrides(LazyConfig.load(config_file), overrides)
    except ConfigNotFoundError as e:
        raise SystemExit(f"demo: {e}") from None
    except UnknownConfigKeyError as e:
        hint = ""
        if any(o.split("=", 1)[0].isupper() for o in overrides):
            hint = (" (This is a LazyConfig: Detectron2's yacs keys other than MODEL.WEIGHTS / MODEL.DEVICE do "
                    "not apply; use its lowercase keys, e.g. model.post_processor.score_thresh=0.3.)")
        raise SystemExit(f"demo: --opts: {e}{hint}") from None
    from yolact_d2.deploy.precision import PrecisionError

    options = dict(device=device, score_threshold=args.confidence_threshold, precision=args.precision)
    try:
        with calibration_folder(args.calibration) as calibration:
            if args.precision != "int8":
                return Predictor(cfg, weights, **options)
            if not is_video_config(cfg):
                return Predictor(cfg, weights, calibration=calibration, **options)
            # VideoPredictor.from_predictor cannot turn the image int8 graph into the two video graphs
            return VideoPredictor(cfg, weights, keyframe_interval=args.keyframe_interval,
                                  adaptive=adaptive_rule(args), calibration=calibration, **options)
    except PrecisionError as e:  # the machine lacks what the precision needs: one line naming it
        raise SystemExit(f"demo: --precision: {e}") from None
    except (ValueError, FileNotFoundError, KeyError) as e:
        if args.precision != "int8":
            raise
        raise SystemExit(f"demo: --precision int8: {e}") from None  # weights / calibration problems, by name


def main(argv=None) -> int:
    args = parse_args(argv)
    sources = expand_inputs(args.input)
    if args.video_input is not None:
        if not os.path.isfile(args.video_input):
            raise SystemExit(f"demo: --video-input '{args.video_input}' does not exist.")
        sources.append(file_source(args.video_input, kind="video"))
    if args.webcam is not None:
        sources.append(webcam_source(args.webcam))
    check_output(args.output, sources)
    predictor = build_predictor(args)
    video = video_predictor(predictor, args)  # YolactEdge video models: keyframes + warped frames
    failed = []
    for source in sources:
        out = output_path(args.output, sources, source)
        try:
            if source.kind == "image":
                run_image(predictor, source.path, out)
            else:
                run_video(video or predictor, source, out, args.max_frames)
        except InputError as e:
            print(f"demo: skipped: {e}", file=sys.stderr)
            failed.append(str(source.path))
    if failed:
        print(f"demo: {len(failed)} of {len(sources)} inputs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
