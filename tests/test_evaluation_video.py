"""yolact_d2.evaluation.video / .flow: COCO AP over YolactEdge's keyframe phases, the feature-transfer
measurement, the flow net's end-point error, and tools/train_net.py's dispatch to them.

Oracles: hand-written YouTube-VIS jsons read by the real register_ytvis_instances and mapped by the
real test mapper; a model double (an nn.Module with YolactEdge's inference_video signature) that
returns each frame's ground truth, or a hand-made plan of true and false detections per warp
distance, whose COCO AP is computed by hand (101-point interpolation) and by a brute-force AP loop
written here; the official eval.py keyframe rule transcribed as a loop; hand-computed end-point
errors; and, on the real YolactEdge model, an identity feature transfer (zero flow, no SPA), under
which warped P4/P5 are the keyframe's own.
"""
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances
from torch import nn

from yolact_d2.data import YolactDatasetMapper
from yolact_d2.data.video import register_flying_chairs, register_ytvis_instances, write_flo
from yolact_d2.evaluation import (
    FlowEPEEvaluator,
    VideoEvaluator,
    inference_on_flow_dataset,
    inference_on_video_dataset,
    keyframe_schedule,
)

H, W = 48, 64
FP_BOX = [48.0, 2.0, 12.0, 10.0]  # XYWH, where no object of the hand-made clip ever goes


# ---------------------------------------------------------------------------- data
def rect(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def uncompressed_rle(x, y, w, h):
    """YouTube-VIS's usual mask format: an uncompressed RLE (column-major run lengths, zeros first)."""
    m = np.zeros((H, W), np.uint8)
    m[y:y + h, x:x + w] = 1
    flat = m.flatten(order="F")
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


def write_ytvis(root, name, videos, categories, tracks):
    """videos: {video_id: num_frames}; tracks: [(video_id, category_id, iscrowd, [segm or None per frame])].
    Writes the frames (PNG, a seeded pattern that moves) and the json; returns the json path."""
    os.makedirs(os.path.join(root, name), exist_ok=True)
    js = {"videos": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in categories]}
    for vid, n in videos.items():
        names = [f"v{vid}/{t:05d}.png" for t in range(n)]
        for t, fname in enumerate(names):
            path = os.path.join(root, name, fname)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            img = np.full((H, W, 3), 100, np.uint8)
            cv2.rectangle(img, (4 + 2 * t, 6), (20 + 2 * t, 30), (30, 200, 60), -1)
            cv2.imwrite(path, img)
        js["videos"].append({"id": vid, "file_names": names, "height": H, "width": W, "length": n})
    for k, (vid, cat, crowd, segms) in enumerate(tracks):
        bboxes = [None if s is None else [float(v) for v in mask_util.toBbox(_rle(s))] for s in segms]
        js["annotations"].append({"id": 100 + k, "video_id": vid, "category_id": cat, "iscrowd": crowd,
                                  "segmentations": segms, "bboxes": bboxes})
    path = os.path.join(root, f"{name}.json")
    with open(path, "w") as f:
        json.dump(js, f)
    return path


def _rle(segm):
    if isinstance(segm, list):
        return mask_util.merge(mask_util.frPyObjects(segm, H, W))
    if isinstance(segm["counts"], list):
        return mask_util.frPyObjects(segm, H, W)
    return segm


def register(root, name, *args):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    return register_ytvis_instances(name, write_ytvis(root, name, *args), os.path.join(root, name))


HANDMADE_FRAMES = 10


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ytvis"))
    n = HANDMADE_FRAMES
    # one class, two objects on every frame (A above B, both moving right)
    handmade = register(root, "evalvid_handmade", {1: n}, [(7, "blob")], [
        (1, 7, 0, [rect(2 + t, 4, 12, 16) for t in range(n)]),
        (1, 7, 0, [rect(4 + t, 26, 12, 16) for t in range(n)]),
    ])
    # two videos (7 frames; 3 frames: shorter than the interval), json category ids 3 and 9, an
    # object that leaves (nulls), an uncompressed-RLE track, a crowd, a frame without objects
    mixed = register(root, "evalvid_mixed", {4: 7, 8: 3}, [(9, "square"), (3, "bar")], [
        (4, 9, 0, [rect(2 + 3 * t, 4, 10, 10) if t < 5 else None for t in range(7)]),
        (4, 3, 0, [uncompressed_rle(30, 20 + t, 20, 6) for t in range(7)]),
        (4, 3, 1, [rect(0, 38, 60, 8) if t in (1, 2) else None for t in range(7)]),
        (8, 9, 0, [rect(5, 5, 8, 8), None, rect(9, 5, 8, 8)]),
    ])
    return {"handmade": handmade, "mixed": mixed}


# ---------------------------------------------------------------------------- model doubles
def instances(boxes_xywh, classes, scores, segms):
    inst = Instances((H, W))
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes_xywh]
    inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    masks = [mask_util.decode(_rle(s)).astype(bool) for s in segms]
    inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, H, W), dtype=torch.bool)
    return inst


def ground_truth(record, distance):
    anns = [a for a in record["annotations"] if not a["iscrowd"]]
    return instances([a["bbox"] for a in anns], [a["category_id"] for a in anns], [1.0] * len(anns),
                     [a["segmentation"] for a in anns])


# Per warp distance (0: keyframe or lead-in): which detections, at which score.
PLAN = {0: [("A", 1.0), ("B", 1.0)], 1: [("A", 0.9), ("FP", 0.8)], 2: [("FP", 0.95), ("A", 0.9), ("B", 0.9)],
        3: [("FP", 0.95), ("A", 0.9)], 4: []}


def planned(record, distance):
    a, b = sorted(record["annotations"], key=lambda ann: ann["bbox"][1])  # A is the upper object
    objects = {"A": (a["bbox"], a["segmentation"]), "B": (b["bbox"], b["segmentation"]),
               "FP": (FP_BOX, rect(*FP_BOX))}
    chosen = PLAN[distance]
    return instances([objects[o][0] for o, _ in chosen], [0] * len(chosen), [s for _, s in chosen],
                     [objects[o][1] for o, _ in chosen])


class VideoModelDouble(nn.Module):
    """inference_video(batched_inputs, state, keyframe) that answers from the dataset's records:
    its state is (video_id, frame) of the keyframe, so the warp distance is known and checked."""

    is_video_model = True

    def __init__(self, dataset_name, predict):
        super().__init__()
        self.records = {r["file_name"]: r for r in DatasetCatalog.get(dataset_name)}
        self.predict = predict
        self.calls = []

    def inference_video(self, batched_inputs, state=None, keyframe=True):
        (inp,) = batched_inputs
        assert inp["image"].shape == (3, H, W)  # what the real test mapper read from the file
        record = self.records[inp["file_name"]]
        t = record["video_frame_idx"]
        if keyframe:
            state = (record["video_id"], t)
        assert state is not None and state[0] == record["video_id"], "warped from another video's keyframe"
        distance = t - state[1]
        self.calls.append((record["video_id"], t, keyframe, distance))
        return [{"instances": self.predict(record, distance)}], state


def evaluate(dataset_name, predict, interval=5):
    model = VideoModelDouble(dataset_name, predict)
    evaluator = VideoEvaluator(dataset_name, keyframe_interval=interval, measure_features=False)
    return inference_on_video_dataset(model, evaluator), model


def ap101(detections, num_gt):
    """Brute force: COCO's 101-point interpolated AP (x100) of [(score, is_true)] against num_gt."""
    detections = sorted(detections, key=lambda d: -d[0])
    tp = fp = 0
    points = []
    for _, true in detections:
        tp, fp = tp + true, fp + (not true)
        points.append((tp / num_gt, tp / (tp + fp)))
    total = 0.0
    for r in np.linspace(0, 1, 101):
        reachable = [p for rec, p in points if rec >= r - 1e-12]
        total += max(reachable) if reachable else 0.0
    return 100 * total / 101


# ---------------------------------------------------------------------------- the schedule
def official_passes(num_frames, interval):
    """Official eval.py, transcribed: per pass, keyframe if frame % stride == pass or no keyframe
    was met yet; else warped from the last keyframe. -> [(pass, frame, is_key, distance)]."""
    out = []
    for pass_idx in range(interval):
        meet, last_key = False, None
        for t in range(num_frames):
            if t % interval == pass_idx or not meet:
                if t % interval == pass_idx:
                    meet = True
                last_key = t
                out.append((pass_idx, t, True, 0))
            else:
                out.append((pass_idx, t, False, t - last_key))
    return out


def test_schedule_matches_the_official_rule():
    for interval in range(1, 7):
        for n in range(0, 13):
            ours = [(p, t, kind != "warped", d) for p in range(interval)
                    for t, (kind, d) in enumerate(keyframe_schedule(n, p, interval))]
            assert ours == official_passes(n, interval), (n, interval)
            scheduled = sorted(t for p in range(interval) for t, (k, _) in enumerate(keyframe_schedule(n, p, interval))
                               if k == "keyframe")
            assert scheduled == list(range(n))  # each frame once a scheduled keyframe
            for d in range(1, interval):  # and once at each distance d it can be warped from
                warped = sorted(t for p in range(interval) for t, (k, dd) in
                                enumerate(keyframe_schedule(n, p, interval)) if k == "warped" and dd == d)
                assert warped == list(range(d, n))
            lead = [t for p in range(interval) for t, (k, _) in enumerate(keyframe_schedule(n, p, interval))
                    if k == "lead_in"]
            assert all(t < interval - 1 for t in lead)
    with pytest.raises(ValueError, match="phase"):
        keyframe_schedule(4, 5, 5)


def test_runner_plays_every_pass_in_order(datasets):
    """The calls the runner makes on the model are exactly the official passes, video by video."""
    _, model = evaluate(datasets["mixed"], ground_truth)
    want = [(vid, t, key, d) for vid, n in ((4, 7), (8, 3)) for _, t, key, d in official_passes(n, 5)]
    assert model.calls == want


# ---------------------------------------------------------------------------- AP
def test_ground_truth_gives_100_in_every_table(datasets):
    results, _ = evaluate(datasets["mixed"], ground_truth)
    tables = ["", "_keyframe", "_warp1", "_warp2", "_warp3", "_warp4"]
    assert set(results) == {task + s for task in ("bbox", "segm") for s in tables}
    for key, res in results.items():
        assert res["AP"] == pytest.approx(100.0), key
        assert res["AP-square"] == pytest.approx(100.0) and res["AP-bar"] == pytest.approx(100.0), key


def test_handmade_case_gives_the_hand_computed_ap(datasets):
    results, _ = evaluate(datasets["handmade"], planned)
    n = HANDMADE_FRAMES
    hand = {
        "_keyframe": 100.0,
        "_warp1": 100 * 51 / 101,  # TP 0.9, FP 0.8 per frame: precision 1 up to recall 1/2
        "_warp2": 100 * 2 / 3,  # FP 0.95 before both TPs: precision 2/3 at every recall
        "_warp3": 100 * 0.5 * 51 / 101,  # FP 0.95, TP 0.9: precision 1/2 up to recall 1/2
        "_warp4": 0.0,  # nothing detected
        # all passes: 20 keyframe passes (10 scheduled + 10 lead-in) with 40 TPs at 1.0, then 15 FPs
        # at 0.95, 32 TPs at 0.9 (recall 0.72, precision 72/87), 9 FPs at 0.8; 100 objects
        "": 100 * (41 + 32 * 72 / 87) / 101,
    }
    for suffix, want in hand.items():
        for task in ("bbox", "segm"):
            assert results[task + suffix]["AP"] == pytest.approx(want, abs=1e-6), task + suffix
    # the same numbers from the brute-force AP loop, built from the plan and the schedule
    passes = official_passes(n, 5)
    tables = {"": lambda p, t, k, d: True, "_keyframe": lambda p, t, k, d: k and t % 5 == p}
    tables.update({f"_warp{w}": (lambda w: lambda p, t, k, d: not k and d == w)(w) for w in range(1, 5)})
    for suffix, keep in tables.items():
        chosen = [d for p, t, k, d in passes if keep(p, t, k, d)]
        dets = [(score, obj != "FP") for d in chosen for obj, score in PLAN[d]]
        assert results["segm" + suffix]["AP"] == pytest.approx(ap101(dets, 2 * len(chosen)), abs=1e-6), suffix


def test_recomputation_mode_scores_every_frame_once_as_keyframe(datasets):
    results, model = evaluate(datasets["handmade"], planned, interval=1)
    assert set(results) == {"bbox", "segm", "bbox_keyframe", "segm_keyframe"}
    assert all(key for _, _, key, _ in model.calls) and len(model.calls) == HANDMADE_FRAMES
    assert results["segm"]["AP"] == pytest.approx(100.0)


def test_errors_name_the_problem(datasets):
    with pytest.raises(ValueError, match="keyframe_interval"):
        VideoEvaluator(datasets["handmade"], keyframe_interval=0)

    class ImageModel(VideoModelDouble):
        is_video_model = False

    image_model = ImageModel(datasets["handmade"], ground_truth)
    with pytest.raises(ValueError, match="keyframe_interval=1"):
        inference_on_video_dataset(image_model, VideoEvaluator(datasets["handmade"], measure_features=False))
    with pytest.raises(TypeError, match="inference_video"):
        inference_on_video_dataset(nn.Linear(1, 1), VideoEvaluator(datasets["handmade"]))
    evaluator = VideoEvaluator(datasets["handmade"], measure_features=False)
    evaluator.reset()
    record = DatasetCatalog.get(datasets["handmade"])[0]
    with pytest.raises(ValueError, match="inference_on_video_dataset"):
        evaluator.process([dict(record)], [{"instances": ground_truth(record, 0)}])


# ---------------------------------------------------------------------------- the real YolactEdge model
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_EDGE = os.path.join(REPO, "configs", "yolact_edge", "moving_shapes", "small_yolact_edge.py")


def small_edge_model(num_classes=None, seed=0):
    from detectron2.config import LazyConfig, instantiate

    from yolact_d2.modeling import set_num_classes

    cfg = LazyConfig.load(SMALL_EDGE)
    if num_classes is not None:
        set_num_classes(cfg.model, num_classes)
    torch.manual_seed(seed)
    return instantiate(cfg.model).eval()


CLIP, INTERVAL = 3, 3  # the real-model tests (lean): 3 frames x 3 passes, warp distances 1 and 2


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory):
    """A clip of CLIP identical frames (nothing moves) and one whose object moves 2 px a frame."""
    root = str(tmp_path_factory.mktemp("short"))
    static = register(root, "evalvid_static", {3: CLIP}, [(1, "blob")], [(3, 1, 0, [rect(4, 6, 16, 24)] * CLIP)])
    first = os.path.join(root, static, "v3", "00000.png")
    for t in range(1, CLIP):
        cv2.imwrite(os.path.join(root, static, "v3", f"{t:05d}.png"), cv2.imread(first))
    moving = register(root, "evalvid_moving", {5: CLIP}, [(1, "blob")],
                      [(5, 1, 0, [rect(4 + 2 * t, 6, 16, 24) for t in range(CLIP)])])
    return {"static": static, "moving": moving, "root": root}


def brute_cosine(a, b):
    """Mean over positions of the channel cosine of two (1, C, h, w) maps, one position at a time."""
    a, b = a[0].double(), b[0].double()
    total = 0.0
    for y in range(a.shape[1]):
        for x in range(a.shape[2]):
            u, v = a[:, y, x], b[:, y, x]
            total += float(u @ v / (u.norm() * v.norm()))
    return total / (a.shape[1] * a.shape[2])


def network_inputs(model, dataset_name):
    mapper = YolactDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    return [model.preprocess_image([mapper(r)]).tensor for r in DatasetCatalog.get(dataset_name)]


@pytest.mark.slow
@torch.no_grad()
def test_feature_transfer_on_a_static_clip(short_clips):
    """Unmoved frames: the keyframe's own P4/P5 are the recomputed ones (cos 1); the warped ones
    match a per-position loop over the model's transfer from the keyframe d frames earlier."""
    model = small_edge_model()
    ft = inference_on_video_dataset(model, VideoEvaluator(short_clips["static"], INTERVAL))["feature_transfer"]
    assert ft["num_warped_frames"] == 2 + 1  # frames t >= d, d = 1, 2
    images = network_inputs(model, short_clips["static"])
    for d in range(1, CLIP):
        want = {"P4": [], "P5": []}
        for t in range(d, CLIP):
            _, state = model.keyframe_features(images[t - d])
            _, own = model.keyframe_features(images[t])
            lateral, flows = model.predict_flow(model.partial_c3(images[t]), state)
            warped = model.transfer_features(lateral, flows, state)
            want["P4"].append(brute_cosine(warped[1], own.features[1]))
            want["P5"].append(brute_cosine(warped[2], own.features[2]))
        for level in ("P4", "P5"):
            assert ft[f"cos_keyframe_{level}_d{d}"] == pytest.approx(1.0, abs=1e-5)
            assert ft[f"cos_warped_{level}_d{d}"] == pytest.approx(np.mean(want[level]), abs=1e-5)


@pytest.mark.slow
@torch.no_grad()
def test_identity_transfer_on_a_moving_clip(short_clips):
    """Zero flow, unit scale, no SPA: the warped P4/P5 are the keyframe's, so both cosines agree,
    and are < 1 (the object moved)."""
    from test_yolact_edge import identity_transfer

    model = identity_transfer(small_edge_model(num_classes=1))
    ft = inference_on_video_dataset(model, VideoEvaluator(short_clips["moving"], INTERVAL))["feature_transfer"]
    for level in ("P4", "P5"):
        for d in (1, 2):
            assert ft[f"cos_warped_{level}_d{d}"] == pytest.approx(ft[f"cos_keyframe_{level}_d{d}"], abs=1e-4)
        assert ft[f"cos_keyframe_{level}_d2"] < 1 - 1e-4


# ---------------------------------------------------------------------------- flow EPE
FLOW_H, FLOW_W, UNKNOWN_ROWS, STATIC_ROWS = 24, 32, 4, 4
GT_FLOW = (3.0, -4.0)  # the pixels below the static rows moved by (3, -4): |gt| = 5
ESTIMATE = (1.0, 0.0)  # what the double predicts: |estimate - gt| = sqrt(2^2 + 4^2) = sqrt(20) there, 1 on static


@pytest.fixture(scope="module")
def chairs(tmp_path_factory):
    """Two FlyingChairs-format pairs (.ppm + .flo) with a known translation; the first rows unknown
    (pair 1: NaN, pair 2: Middlebury's > 1e9 marker), the next ones static."""
    root = tmp_path_factory.mktemp("chairs")
    data = root / "data"
    data.mkdir()
    for k, unknown in ((1, np.nan), (2, 1e10)):
        for img in (1, 2):
            cv2.imwrite(str(data / f"{k:05d}_img{img}.ppm"), np.full((FLOW_H, FLOW_W, 3), 40 * img + k, np.uint8))
        flow = np.empty((FLOW_H, FLOW_W, 2), np.float32)
        flow[...] = GT_FLOW
        flow[:UNKNOWN_ROWS] = unknown
        flow[UNKNOWN_ROWS:UNKNOWN_ROWS + STATIC_ROWS] = 0.0
        write_flo(str(data / f"{k:05d}_flow.flo"), flow)
    name = "evalflow_chairs"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    return register_flying_chairs(name, str(root), split="all")


class FlowDouble(nn.Module):
    """estimate_flow at `scale` x the image size (a model that resizes its input), in pixels of that
    size: the constant ESTIMATE, and garbage where the gt is unknown (it must not count)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def estimate_flow(self, batched_inputs):
        out = []
        for d in batched_inputs:
            h, w = (s * self.scale for s in d["image"].shape[-2:])
            flow = torch.empty(2, h, w)
            flow[0], flow[1] = ESTIMATE[0] * self.scale, ESTIMATE[1] * self.scale
            flow[:, : UNKNOWN_ROWS * self.scale] = 1e6
            out.append(flow)
        return out


@pytest.mark.parametrize("scale", [1, 2])
def test_flow_epe_of_a_known_translation(chairs, scale):
    from detectron2.data import build_detection_test_loader

    from yolact_d2.data.video import VideoPairMapper

    loader = build_detection_test_loader(DatasetCatalog.get(chairs), mapper=VideoPairMapper(is_train=False))
    results = inference_on_flow_dataset(FlowDouble(scale), loader, FlowEPEEvaluator(chairs))
    valid_rows, moving_rows = FLOW_H - UNKNOWN_ROWS, FLOW_H - UNKNOWN_ROWS - STATIC_ROWS
    assert results == {"flow": pytest.approx({
        "EPE": (STATIC_ROWS * 1.0 + moving_rows * np.sqrt(20.0)) / valid_rows,
        "EPE_zero": moving_rows * 5.0 / valid_rows,
        "EPE_moving": np.sqrt(20.0),
        "EPE_zero_moving": 5.0,
        "valid_fraction": valid_rows / FLOW_H,
        "moving_fraction": moving_rows / valid_rows,
    }, rel=1e-6)}


def test_flow_evaluator_errors(chairs):
    evaluator = FlowEPEEvaluator(chairs)
    with pytest.raises(ValueError, match="no gt 'flow'"):
        evaluator.process([{"file_name": "x.png", "image": torch.zeros(3, 4, 4)}], [torch.zeros(2, 4, 4)])
    with pytest.raises(TypeError, match="estimate_flow"):
        inference_on_flow_dataset(nn.Linear(1, 1), [], evaluator)
    assert evaluator.evaluate() == {}  # nothing seen: a warning, no made-up number


# ---------------------------------------------------------------------------- tools/train_net.py
VIDEO_CONFIG = '''
from omegaconf import OmegaConf
from detectron2.config import LazyCall as L, LazyConfig
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from yolact_d2.data import YolactDatasetMapper
from yolact_d2.data.video import register_ytvis_instances
from yolact_d2.evaluation import VideoEvaluator
from yolact_d2.modeling import set_num_classes

register_ytvis_instances("evalvid_cli", {json!r}, {images!r})
model = LazyConfig.load({model!r}).model
set_num_classes(model, 1)
train = LazyConfig.load({train!r}).train
train.device = "cpu"
dataloader = OmegaConf.create()
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="evalvid_cli", filter_empty=False),
    mapper=L(YolactDatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=0,
)
dataloader.evaluator = L(VideoEvaluator)(
    dataset_name="${{..test.dataset.names}}", keyframe_interval={interval}, output_dir="${{train.output_dir}}"
)
'''


@pytest.fixture(scope="module")
def video_config(short_clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    path = root / "video_eval.py"
    path.write_text(VIDEO_CONFIG.format(
        json=os.path.join(short_clips["root"], f"{short_clips['static']}.json"),
        images=os.path.join(short_clips["root"], short_clips["static"]), model=SMALL_EDGE,
        train=os.path.join(REPO, "configs", "common", "train.py"), interval=INTERVAL))
    weights = root / "model.pth"
    torch.save({"model": small_edge_model(num_classes=1).state_dict()}, weights)
    return str(path), str(weights)


@pytest.mark.slow
def test_train_net_eval_only_runs_the_video_evaluation(video_config, tmp_path):
    """The real CLI: --eval-only on a video config prints and writes the video tables; on the
    static clip the keyframe's unwarped P4/P5 are the recomputed ones (cos 1)."""
    import subprocess
    import sys

    config, weights = video_config
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config, "--eval-only",
         f"train.init_checkpoint={weights}", f"train.output_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "video_evaluation.json") as f:
        results = json.load(f)
    assert {"bbox", "segm", "bbox_keyframe", "segm_keyframe", "bbox_warp1", "segm_warp2"} <= set(results)
    assert results["feature_transfer"]["cos_keyframe_P4"] == pytest.approx(1.0, abs=1e-5)
    assert "copypaste: Task: segm_warp1" in proc.stderr + proc.stdout  # Detectron2's print_csv_format


def test_train_net_dispatch_in_process(video_config, chairs):
    """do_test sends a FlowEPEEvaluator config to estimate_flow; --precision int8 on a video config
    is an error naming the evaluator, before anything is built."""
    from detectron2.config import LazyCall as L, LazyConfig
    from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
    from omegaconf import OmegaConf

    from yolact_d2.data.video import VideoPairMapper
    from yolact_d2.deploy.precision import PrecisionError
    from yolact_d2.tools import train_net

    cfg = OmegaConf.create({"dataloader": {}})
    cfg.dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=chairs, filter_empty=False),
        mapper=L(VideoPairMapper)(is_train=False),
    )
    cfg.dataloader.evaluator = L(FlowEPEEvaluator)(dataset_name=chairs)
    results = train_net.do_test(cfg, FlowDouble(1))
    assert results["flow"]["EPE_moving"] == pytest.approx(np.sqrt(20.0), rel=1e-6)

    video_cfg = LazyConfig.load(video_config[0])
    with pytest.raises(PrecisionError, match="VideoEvaluator"):
        train_net.do_eval_only(video_cfg, "int8")


@pytest.mark.slow
def test_train_net_bf16_video_evaluation_is_close_to_fp32(video_config, tmp_path):
    """--precision bf16 runs the video passes on the bf16 network: the oracle is the fp32 model."""
    from detectron2.config import LazyConfig

    from yolact_d2.deploy.precision import PrecisionError, check_precision
    from yolact_d2.tools import train_net

    try:
        check_precision("bf16", "cpu")
    except PrecisionError as e:
        pytest.skip(str(e))
    cfg = LazyConfig.load(video_config[0])
    cfg.train.init_checkpoint, cfg.train.output_dir = video_config[1], str(tmp_path)
    fp32, bf16 = train_net.do_eval_only(cfg, "fp32"), train_net.do_eval_only(cfg, "bf16")
    assert set(fp32) == set(bf16)
    for key, value in fp32["feature_transfer"].items():
        assert bf16["feature_transfer"][key] == pytest.approx(value, abs=0.02), key
