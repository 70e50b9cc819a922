"""tools/demo.py on real image and video files with seeded weights, with its own and Detectron2's flags.

Checks the written files: same size as the input, pixels changed where the most confident
detection's mask is, unchanged far from every detection, one output frame per input frame; the
detections listed for Detectron2-style `--opts KEY VALUE` equal those of the Predictor given the
same weights and input size; an unreadable file is skipped with exit status 1; several inputs
with a file-like --output, a camera that does not open and a bad override are clear errors.
"""
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import inference_fixtures as fx

DEMO = os.path.join(fx.REPO, "tools", "demo.py")
THRESH = 0.35


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return fx.write_checkpoint(str(tmp_path_factory.mktemp("w") / "seeded.pth"), seed=0)


def run_demo(weights, *args):
    proc = run_demo_raw("--config", fx.R50_CONFIG, "--weights", weights, "--device", "cpu",
                        "--confidence-threshold", str(THRESH), *args, "--opts", *fx.SMALL_OPTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def run_demo_raw(*args, timeout=600):
    return subprocess.run([sys.executable, DEMO, *args], capture_output=True, text=True, timeout=timeout)


def write_video(path, num_frames, seed):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (128, 96))
    for i in range(num_frames):
        writer.write(fx.test_image(96, 128, seed=seed + i))
    writer.release()


def count_frames(path):
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    return frames


def test_demo_image(weights, tmp_path):
    from yolact_d2 import Predictor

    image = fx.test_image(120, 160, seed=1)
    src = str(tmp_path / "in.png")
    cv2.imwrite(src, image)
    out = str(tmp_path / "drawn.png")
    log = run_demo(weights, "--input", src, "--output", out)

    drawn = cv2.imread(out)
    assert drawn is not None and drawn.shape == image.shape
    pred = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, score_threshold=THRESH)
    inst = pred(image)
    assert len(inst) > 0 and f"{len(inst)} detections" in log
    assert pred.metadata.thing_classes[int(inst.pred_classes[0])] in log  # class names are listed
    diff = np.abs(drawn.astype(np.int32) - image.astype(np.int32)).sum(axis=2)  # (H, W)
    # the best detection's mask is painted over (Visualizer blends a colour into it)
    best = inst.pred_masks[int(torch.argmax(inst.scores))].numpy()
    if best.sum() > 20:
        assert (diff[best] > 0).mean() > 0.5
    # far from every detected box (box + label margin) the image is untouched
    covered = np.zeros(image.shape[:2], bool)
    for x1, y1, x2, y2 in inst.pred_boxes.tensor.round().int().tolist():
        covered[max(y1 - 15, 0): y2 + 15, max(x1 - 15, 0): x2 + 15] = True
    assert diff[covered].sum() > 0
    if (~covered).sum() > 100:
        assert (diff[~covered] == 0).mean() > 0.95


def test_demo_folder_glob_and_video(weights, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(2):
        cv2.imwrite(str(inputs / f"img{i}.png"), fx.test_image(96, 128, seed=10 + i))
    write_video(str(tmp_path / "clip.avi"), 4, seed=20)
    out_dir = tmp_path / "out"
    log = run_demo(weights, "--input", str(inputs), str(tmp_path / "*.avi"), "--output", str(out_dir))

    assert sorted(os.listdir(out_dir)) == ["clip.mp4", "img0.png", "img1.png"]
    for name in ("img0.png", "img1.png"):
        assert cv2.imread(str(out_dir / name)).shape == (96, 128, 3)
    frames = count_frames(str(out_dir / "clip.mp4"))
    assert len(frames) == 4 and frames[0].shape == (96, 128, 3)
    assert "4 frames in" in log and "frames/s" in log  # progress/fps report


def test_demo_bad_input(weights, tmp_path):
    cmd = [sys.executable, DEMO, "--config", fx.R50_CONFIG, "--weights", weights, "--input",
           str(tmp_path / "missing.jpg")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "missing.jpg' does not exist" in proc.stderr


@pytest.mark.slow
def test_demo_detectron2_flags_skip_unreadable_file(weights, tmp_path):
    """Detectron2's flags (--config-file as a model-zoo name, --video-input, --webcam with a stream
    path, --opts KEY VALUE with MODEL.WEIGHTS / MODEL.DEVICE); a broken file is skipped, exit 1."""
    from yolact_d2 import Predictor

    folder = tmp_path / "inputs"
    folder.mkdir()
    image = fx.test_image(96, 128, seed=10)
    cv2.imwrite(str(folder / "a.png"), image)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    cv2.imwrite(str(folder / "c.png"), fx.test_image(96, 128, seed=11))
    write_video(str(tmp_path / "clip.avi"), 4, seed=20)
    write_video(str(tmp_path / "stream.avi"), 3, seed=30)  # OpenCV opens a file path as it opens a stream URL
    out_dir = tmp_path / "out"
    proc = run_demo_raw(
        "--config-file", "yolact/yolact_R_50_FPN_550.py", "--input", str(folder), "--video-input",
        str(tmp_path / "clip.avi"), "--webcam", str(tmp_path / "stream.avi"), "--output", str(out_dir),
        "--confidence-threshold", str(THRESH), "--max-frames", "3",
        "--opts", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", "model.input_size", str(fx.SMALL_INPUT),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    assert "broken.jpg" in proc.stderr and "1 of 5 inputs failed" in proc.stderr, log
    assert sorted(os.listdir(out_dir)) == ["a.png", "c.png", "clip.mp4", "stream.mp4"]
    assert len(count_frames(str(out_dir / "clip.mp4"))) == 3  # --max-frames
    assert len(count_frames(str(out_dir / "stream.mp4"))) == 3
    # the pairs were applied: same detections as the Predictor with these weights at this input size
    from yolact_d2.tools.demo import describe

    pred = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, score_threshold=THRESH)
    ref = pred(image)
    line = next(l for l in proc.stdout.splitlines() if l.startswith(str(folder / "a.png")))
    assert len(ref) > 0 and f": {len(ref)} detections in " in line
    assert line.endswith(describe(ref, pred.metadata.thing_classes)), line


def test_demo_several_inputs_need_output_folder(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), fx.test_image(32, 32, seed=i))
    proc = run_demo_raw("--config-file", fx.R50_CONFIG, "--input", str(tmp_path / "*.png"),
                        "--output", str(tmp_path / "drawn.png"), timeout=120)
    assert proc.returncode != 0
    assert "looks like a file name, but there are 2 inputs" in proc.stderr and "give a folder" in proc.stderr
    assert not (tmp_path / "drawn.png").exists()


def test_demo_opts_both_styles():
    from yolact_d2.tools.demo import split_opts

    overrides, arguments = split_opts(
        ["model.input_size=160", "MODEL.WEIGHTS", "w.pth", "model.post_processor.top_k", "-1", "MODEL.DEVICE=cpu"]
    )
    assert overrides == ["model.input_size=160", "model.post_processor.top_k=-1"]
    assert arguments == {"weights": "w.pth", "device": "cpu"}
    with pytest.raises(SystemExit, match="'model.input_size' has no value"):
        split_opts(["model.input_size"])


def test_demo_bad_override_and_camera(tmp_path):
    from yolact_d2.tools import demo

    image = str(tmp_path / "in.png")
    cv2.imwrite(image, fx.test_image(32, 32, seed=0))
    with pytest.raises(SystemExit, match="input_size"):  # the close match is named
        demo.main(["--config-file", fx.R50_CONFIG, "--input", image, "--opts", "model.input_sise", "160"])
    with pytest.raises(demo.InputError, match="cannot open camera 97"):
        demo.open_capture(demo.webcam_source("97"))
    with pytest.raises(demo.InputError, match="cannot open the stream"):
        demo.open_capture(demo.webcam_source(str(tmp_path / "no_such_stream.mjpg")))


@pytest.mark.slow
def test_demo_yolact_edge_video_keyframes(tmp_path):
    """A YolactEdge video config runs videos through VideoPredictor: keyframes at frames 0, 3, 6 for
    --keyframe-interval 3 (official rule frame_idx % N == 0), labelled in the drawing (red KEYFRAME,
    white 'warped'), one output frame per input frame. (Threshold 0.9: no detection is drawn over the label.)"""
    vid_r18 = os.path.join(fx.REPO, "configs", "yolact_edge", "yolact_edge_vid_R_18_FPN_550.py")
    opts = ["model.input_size=128"]
    weights = fx.write_checkpoint(str(tmp_path / "edge.pth"), seed=0, config=vid_r18, opts=opts)
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (128, 96))
    for i in range(7):  # a plain background (no red under the label) and one moving disc
        frame = np.full((96, 128, 3), (90, 110, 130), np.uint8)
        writer.write(cv2.circle(frame, (40 + 4 * i, 60), 18, (40, 200, 60), -1))
    writer.release()
    out = str(tmp_path / "drawn.mp4")
    proc = run_demo_raw("--config", vid_r18, "--weights", weights, "--device", "cpu", "--input", video,
                        "--output", out, "--keyframe-interval", "3", "--confidence-threshold", "0.9", "--opts", *opts)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "3 keyframes (frames 0, 3, 6)" in log
    # both kinds timed, each with its own frame count (3 keyframes, 4 warped frames)
    assert re.search(r"keyframe [\d.]+ ms \([\d.]+ fps, 3 frames\); warped [\d.]+ ms \([\d.]+ fps, 4 frames\)", log), log
    frames = count_frames(out)
    assert len(frames) == 7
    label = [f[2:16, 2:100].astype(np.int32) for f in frames]
    red = [int(((p[..., 2] > 150) & (p[..., 1] < 110)).sum()) for p in label]  # BGR: red text pixels
    assert min(red[i] for i in (0, 3, 6)) > max(red[i] for i in (1, 2, 4, 5)) + 10, red


@pytest.mark.slow  # ~2/3 of it: the dynamo export of the two video graphs
def test_demo_int8_yolact_edge_video_calibrates_on_a_video(tmp_path, capsys):
    """--precision int8 with a YolactEdge video config builds VideoPredictor(precision="int8") (it
    used to build the image int8 graph and stop): --calibration takes a video file. Oracle: a
    VideoPredictor given a folder of the same decoded frames (PNG) computes the same cache key, so it
    finds the demo's two int8 graphs next to the weights and builds nothing; no image int8 graph
    (<weights>.int8.<hash>.onnx) is written; one drawn frame per input frame, keyframes 0 and 3."""
    from yolact_d2 import VideoPredictor
    from yolact_d2.deploy import quantize
    from yolact_d2.tools import demo

    config = os.path.join(fx.REPO, "configs", "yolact_edge", "moving_shapes", "video_finetune.py")
    weights = fx.write_checkpoint(str(tmp_path / "edge.pth"), seed=0, config=config, opts=[])
    video = str(tmp_path / "clip.avi")
    write_video(video, 5, seed=40)
    out = str(tmp_path / "drawn.mp4")
    code = demo.main(["--config", config, "--weights", weights, "--device", "cpu", "--precision", "int8",
                      "--calibration", video, "--video-input", video, "--output", out, "--keyframe-interval", "3"])
    log = capsys.readouterr()
    assert code == 0, log.err
    assert "int8 calibration on 5 frames" in log.out and "2 keyframes (frames 0, 3)" in log.out, log.out
    assert len(count_frames(out)) == 5
    built = sorted(f for f in os.listdir(tmp_path) if ".int8." in f)
    assert len(built) == 2 and built[0].endswith(".keyframe.onnx") and built[1].endswith(".warped.onnx"), built

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(count_frames(video)):
        cv2.imwrite(str(frames / f"{i:03d}.png"), frame)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the demo's int8 video graphs were not found: calibrated on other frames?")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize, "quantize_onnx_int8", no_rebuild)
        vp = VideoPredictor(config, weights, device="cpu", precision="int8", calibration=str(frames),
                            score_threshold=0.3)  # the demo's --confidence-threshold default (hashed with the graph)
    assert sorted(os.path.basename(p) for p in vp.int8_paths) == built


def test_demo_calibration_errors(tmp_path):
    from yolact_d2.tools import demo

    image = str(tmp_path / "in.png")
    cv2.imwrite(image, fx.test_image(32, 32, seed=0))
    with pytest.raises(SystemExit):  # argparse: --calibration without int8
        demo.parse_args(["--config", fx.R50_CONFIG, "--input", image, "--calibration", str(tmp_path)])
    with pytest.raises(SystemExit, match="'.*in.png' is a file but not a video"):
        with demo.calibration_folder(image):
            pass
    with pytest.raises(SystemExit, match="'.*nothing' does not exist"):
        with demo.calibration_folder(str(tmp_path / "nothing")):
            pass
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(SystemExit, match="cannot read a frame of the video"):
        with demo.calibration_folder(str(tmp_path / "broken.mp4")):
            pass
