"""tools/demo.py on a real image file and a real video file with seeded weights.

Checks the written files: same size as the input, pixels changed where the most confident
detection's mask is, unchanged far from every detection, one output frame per input frame.
"""
import os
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
    cmd = [sys.executable, DEMO, "--config", fx.R50_CONFIG, "--weights", weights, "--device", "cpu",
           "--confidence-threshold", str(THRESH), *args, "--opts", *fx.SMALL_OPTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


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
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (128, 96))
    for i in range(4):
        writer.write(fx.test_image(96, 128, seed=20 + i))
    writer.release()
    out_dir = tmp_path / "out"
    log = run_demo(weights, "--input", str(inputs), str(tmp_path / "*.avi"), "--output", str(out_dir))

    assert sorted(os.listdir(out_dir)) == ["clip.mp4", "img0.png", "img1.png"]
    for name in ("img0.png", "img1.png"):
        assert cv2.imread(str(out_dir / name)).shape == (96, 128, 3)
    cap = cv2.VideoCapture(str(out_dir / "clip.mp4"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 4 and frames[0].shape == (96, 128, 3)
    assert "4 frames in" in log and "frames/s" in log  # progress/fps report


def test_demo_bad_input(weights, tmp_path):
    cmd = [sys.executable, DEMO, "--config", fx.R50_CONFIG, "--weights", weights, "--input",
           str(tmp_path / "missing.jpg")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "missing.jpg' does not exist" in proc.stderr
