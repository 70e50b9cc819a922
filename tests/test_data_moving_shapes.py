"""The synthetic moving-shapes video set: deterministic, idempotent, atomic (dead writers' leftovers
removed), nothing written at config load, a YouTube-VIS json that our reader takes, masks that are
the visible parts of the shapes the motion record describes, and a flow that is exact.

Oracles: the object-id maps are recomputed here from the motion record with our own point-in-
polygon test (crossing number), independent of the generator's rasteriser; the flow is checked by
warping the reference's id map onto the target (nearest sampling) and, pixel by pixel, against
the similarity motion inverted by hand."""
import json
import os
import pickle
import socket
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from yolact_d2.data import moving_shapes as ms_mod
from yolact_d2.data.moving_shapes import (
    MovingShapesFlow,
    generate_moving_shapes_dataset,
    moving_shapes_flow_source,
    prepare_moving_shapes,
    read_motion,
    render_flow,
    render_object_ids,
    write_clip_video,
)
from yolact_d2.data.shapes import dataset_fingerprint

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_train_clips=3, num_val_clips=2, num_frames=6, image_size=64)
SIZE, FRAMES = 128, 20


# ----------------------------------------------------------------------------- the oracle
def _inside(poly, points):
    """Crossing-number point-in-polygon: (N,) bool for points (N, 2) and a polygon (K, 2)."""
    out = np.zeros(len(points), bool)
    near = ((points >= poly.min(0)) & (points <= poly.max(0))).all(1)  # only these can be inside
    out[near] = _crossing_test(poly, points[near])
    return out


def _crossing_test(poly, points):
    x, y = points[:, :1], points[:, 1:]
    x0, y0 = poly[:, 0][None], poly[:, 1][None]
    x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    straddles = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return ((straddles & (x < x_cross)).sum(1) % 2) == 1


def _pose(obj, t):
    """(scale, rotation matrix acting on column (x, y), centre) of object `obj` at frame t."""
    a = obj["angle"][t]
    return obj["scale"][t], np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]), np.array(obj["center"][t])


def _polygon_at(obj, t):
    s, rot, c = _pose(obj, t)
    return (s * (rot @ np.asarray(obj["polygon"]).T)).T + c


def _topmost(motion, t, points):
    """Object index + 1 (0: background) of the topmost shape containing each point at frame t."""
    ids = np.zeros(len(points), np.int64)
    for k, obj in enumerate(motion["objects"]):  # z-order: later ones on top
        ids[_inside(_polygon_at(obj, t), points)] = k + 1
    return ids


def _centres(h, w):
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1).astype(np.float64)


def _oracle_ids(motion, t):
    h, w = motion["height"], motion["width"]
    return _topmost(motion, t, _centres(h, w)).reshape(h, w)


# ----------------------------------------------------------------------------- generation
def test_deterministic_for_a_seed(tmp_path):
    generate_moving_shapes_dataset(tmp_path / "a", seed=5, **SMALL)
    generate_moving_shapes_dataset(tmp_path / "b", seed=5, **SMALL)
    generate_moving_shapes_dataset(tmp_path / "c", seed=6, **SMALL)
    fa, fb, fc = (dataset_fingerprint(tmp_path / x) for x in "abc")
    assert fa == fb
    assert fa != fc


def test_idempotent_regenerates_on_new_params_and_removes_dead_writers_leftovers(tmp_path):
    root = tmp_path / "s"
    json_file = generate_moving_shapes_dataset(root, **SMALL)["train"][0]
    mtime = os.stat(json_file).st_mtime_ns
    generate_moving_shapes_dataset(root, **SMALL)
    assert os.stat(json_file).st_mtime_ns == mtime  # untouched
    # A writer killed mid-way (its pid is gone) left a temporary folder; a live one is writing now.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host = socket.gethostname()
    (tmp_path / f".s.tmp-{host}-{dead}-0123456789ab" / "train").mkdir(parents=True)
    (tmp_path / f".s.old-{host}-{dead}-0123456789ab").mkdir()
    live = tmp_path / f".s.tmp-{host}-{os.getpid()}-0123456789ab"
    live.mkdir()
    generate_moving_shapes_dataset(root, **dict(SMALL, num_train_clips=2))
    with open(json_file) as f:
        assert len(json.load(f)["videos"]) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(["s", live.name])


def test_interrupted_generation_leaves_nothing_and_keeps_the_old_set(tmp_path, monkeypatch):
    root = tmp_path / "s"
    real = ms_mod._write_split

    def dying(out_dir, split, *args):
        if split == "val":
            raise KeyboardInterrupt("killed")
        return real(out_dir, split, *args)

    monkeypatch.setattr(ms_mod, "_write_split", dying)
    with pytest.raises(KeyboardInterrupt):
        generate_moving_shapes_dataset(root, **SMALL)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(ms_mod, "_write_split", real)
    generate_moving_shapes_dataset(root, **SMALL)
    before = dataset_fingerprint(root)
    monkeypatch.setattr(ms_mod, "_write_split", dying)
    with pytest.raises(KeyboardInterrupt):
        generate_moving_shapes_dataset(root, **dict(SMALL, seed=9))
    assert dataset_fingerprint(root) == before and os.listdir(tmp_path) == ["s"]


@pytest.mark.parametrize("bad, match", [
    (dict(kinds=("circle", "hexagonal")), "hexagonal"),
    (dict(num_frames=1), "num_frames"),
    (dict(leave_prob=0.7, enter_prob=0.5), "leave_prob"),
    (dict(image_ext="gif"), "image_ext"),
])
def test_bad_parameters_are_named_and_nothing_is_written(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        prepare_moving_shapes(tmp_path / "x", prefix="test_ms_bad", **dict(SMALL, **bad))
    with pytest.raises(ValueError, match=match):
        generate_moving_shapes_dataset(tmp_path / "x", **dict(SMALL, **bad))
    assert os.listdir(tmp_path) == []


CONFIG = os.path.join(REPO, "configs", "common", "data", "moving_shapes.py")


def test_loading_the_config_writes_nothing(tmp_path, monkeypatch):
    """In an empty folder with DETECTRON2_DATASETS pointing at an empty one: registration only."""
    from detectron2.config import LazyConfig

    cwd, data = tmp_path / "cwd", tmp_path / "datasets"
    cwd.mkdir()
    data.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data))
    cfg = LazyConfig.load(CONFIG)
    assert os.listdir(cwd) == [] and os.listdir(data) == []
    assert MetadataCatalog.get("moving_shapes_val").thing_classes == ["circle", "rectangle", "triangle", "star"]
    assert MetadataCatalog.get("moving_shapes_train").motion_root == str(data / "moving_shapes/train/motion")
    assert cfg.dataloader.train.mapper.flow_source.dataset_name == "moving_shapes_train"  # interpolation
    assert cfg.flow_dataloader.test.mapper.flow_source.dataset_name == "moving_shapes_val"


def _photometric_error(d):
    """Per moving pixel: |reference sampled at p + flow(p) (nearest) - target| and the same without
    the flow, in grey levels; where the flow is known and points into the frame."""
    image = d["image"].permute(1, 2, 0).numpy().astype(np.float64)
    reference = d["reference_image"].permute(1, 2, 0).numpy().astype(np.float64)
    flow = d["flow"].numpy().astype(np.float64)
    h, w = flow.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w]
    known = np.isfinite(flow).all(0)
    jx = np.floor(xs + np.nan_to_num(flow[0]) + 0.5).astype(int)
    jy = np.floor(ys + np.nan_to_num(flow[1]) + 0.5).astype(int)
    sel = known & (jx >= 0) & (jx < w) & (jy >= 0) & (jy < h) & (np.abs(np.nan_to_num(flow)).sum(0) > 0.5)
    warped = np.abs(reference[jy[sel], jx[sel]] - image[sel]).mean(-1)
    return warped, np.abs(reference[sel] - image[sel]).mean(-1)


def test_config_train_pairs_carry_the_exact_flow(tmp_path):
    """The config's train loader (VideoPairMapper + MovingShapesFlow, with flips): sampling each
    pair's reference image at p + flow(p) gives the target image (brightness constancy: the
    generator's colours and textures move with the shapes), far closer than the reference itself.
    Pixels whose point was hidden in the reference keep a large error, hence the median."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(CONFIG)
    prepare_moving_shapes(tmp_path / "ms", num_train_clips=3, num_val_clips=1, seed=1)  # small, same names
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.train.total_batch_size = 12
    batch = next(iter(instantiate(cfg.dataloader.train)))
    errors, unwarped, gaps = [], [], set()
    for d in batch:
        assert d["flow"].shape == (2, 128, 128) and d["reference_image"].shape == d["image"].shape
        gaps.add(d["frame_gap"])
        if d["frame_gap"]:
            e, e0 = _photometric_error(d)
            errors.append(e)
            unwarped.append(e0)
    errors, unwarped = np.concatenate(errors), np.concatenate(unwarped)
    assert gaps & {2, 3, 4, 5} and len(errors) > 1000
    assert np.median(errors) <= 1.5 and (errors < 8).mean() > 0.9
    assert errors.mean() < unwarped.mean() / 3
    # The flow pre-training loader: val pairs, resize only, the exact flow too.
    cfg.flow_dataloader.test.num_workers = 0
    d = next(iter(instantiate(cfg.flow_dataloader.test)))[0]
    assert "flow" in d and np.isfinite(d["flow"].numpy()).all()


# ----------------------------------------------------------------------------- the set's content
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("moving") / "moving_shapes"
    names = prepare_moving_shapes(root, prefix="test_moving", num_train_clips=6, num_val_clips=2,
                                  num_frames=FRAMES, image_size=SIZE, seed=3)
    assert not root.exists()  # registration wrote nothing
    records = DatasetCatalog.get(names[0])  # generates
    with open(root / "annotations" / "instances_train.json") as f:
        ytvis = json.load(f)
    motions = {v["id"]: read_motion(root / "train" / "motion" / f"{os.path.dirname(v['file_names'][0])}.json")
               for v in ytvis["videos"]}
    return root, names, records, ytvis, motions


def test_json_reads_back_as_youtube_vis_records(dataset):
    root, names, records, ytvis, motions = dataset
    assert len(ytvis["videos"]) == 6 and all(len(v["file_names"]) == FRAMES for v in ytvis["videos"])
    assert [c["name"] for c in ytvis["categories"]] == ["circle", "rectangle", "triangle", "star"]
    assert MetadataCatalog.get(names[0]).thing_classes == ["circle", "rectangle", "triangle", "star"]
    assert MetadataCatalog.get(names[0]).evaluator_type == "ytvis"
    assert len(records) == 6 * FRAMES  # one record per frame, annotated or not
    tracks = {a["id"]: a for a in ytvis["annotations"]}
    for rec in records:
        motion = motions[rec["video_id"]]
        assert os.path.isfile(rec["file_name"]) and len(rec["video_frames"]) == FRAMES
        present = {obj["annotation_id"] for obj in motion["objects"]
                   if tracks[obj["annotation_id"]]["segmentations"][rec["frame_idx"]] is not None}
        assert {a["track_id"] for a in rec["annotations"]} == present  # nulls are simply absent
        for ann in rec["annotations"]:
            assert ann["category_id"] == tracks[ann["track_id"]]["category_id"] - 1  # contiguous
            assert ann["iscrowd"] == 0
    assert all(len(v["file_names"]) == FRAMES for v in ytvis["videos"])


def test_masks_are_the_visible_parts_and_pixels_match(dataset):
    """Each frame's masks are the oracle's visible region of each object (topmost shape at each pixel
    centre), null exactly where fewer than min_area pixels show; the object's pixels have its colour
    (up to the stripe texture)."""
    root, _, _, ytvis, motions = dataset
    tracks = {a["id"]: a for a in ytvis["annotations"]}
    min_area = json.loads((root / "generation.json").read_text())["min_area"]
    for video in ytvis["videos"]:
        motion = motions[video["id"]]
        for t, name in enumerate(video["file_names"]):
            ids = _oracle_ids(motion, t)
            np.testing.assert_array_equal(render_object_ids(motion, t), ids)
            image = cv2.imread(str(root / "train" / "JPEGImages" / name)).astype(np.float64)
            for k, obj in enumerate(motion["objects"]):
                visible = ids == k + 1
                track = tracks[obj["annotation_id"]]
                segm = track["segmentations"][t]
                if visible.sum() < min_area:
                    assert segm is None and track["bboxes"][t] is None and track["areas"][t] is None
                    continue
                np.testing.assert_array_equal(mask_util.decode(segm).astype(bool), visible)
                assert track["areas"][t] == visible.sum()
                ys, xs = np.nonzero(visible)
                np.testing.assert_allclose(track["bboxes"][t], [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                                                ys.max() - ys.min() + 1])
                colour, amp = np.array(obj["colour"], np.float64), obj["texture"]["amplitude"]
                assert (np.abs(image[visible] - colour) <= amp * colour + 1).all()


def test_some_objects_leave_or_enter_and_some_are_occluded(dataset):
    _, _, _, ytvis, motions = dataset
    tracks = {a["id"]: a for a in ytvis["annotations"]}
    left = occluded = 0
    for motion in motions.values():
        for k, obj in enumerate(motion["objects"]):
            segms = tracks[obj["annotation_id"]]["segmentations"]
            for t in range(FRAMES):
                poly = _polygon_at(obj, t)
                outside = (poly.max(0) < 0).any() or (poly.min(0) > SIZE).any()
                if outside:
                    assert segms[t] is None
                    # seen on some frame, wholly outside on another: it left or entered the frame
                    left += any(s is not None for s in segms)
                inside = (poly.min(0) >= 0).all() and (poly.max(0) <= SIZE).all()
                if inside and segms[t] is not None:
                    whole = _inside(poly, _centres(SIZE, SIZE)).reshape(SIZE, SIZE)
                    hidden = whole & ~mask_util.decode(segms[t]).astype(bool)
                    if hidden.any():
                        occluded += 1
                        # what is hidden lies under a later (higher) object
                        above = np.zeros_like(whole)
                        for later in motion["objects"][k + 1:]:
                            above |= _inside(_polygon_at(later, t), _centres(SIZE, SIZE)).reshape(SIZE, SIZE)
                        assert not (hidden & ~above).any()
    assert left > 0 and occluded > 0


# ----------------------------------------------------------------------------- the flow
def _pairs():
    """(clip index, target, reference): gaps 1-5 backwards (training), forwards and the clip's ends."""
    out = []
    for c in range(6):
        for t, r in ((5, 3), (9, 4), (12, 11), (19, 15), (2, 7), (0, 19), (19, 0), (8, 8)):
            out.append((c, t, r))
    return out


def test_warping_the_reference_ids_by_the_flow_gives_the_target_ids(dataset):
    """Nearest-sampling the reference frame's id map at p + flow(p) reproduces the target's id map at
    every pixel whose point was visible in the reference: exactly where the sampled pixel is not on
    an id boundary (but for at most 2 points a pair on a sub-pixel sliver), and on >= 99% of all such pixels (a pixel centre may lie across an edge from the
    point). The flow comes from MovingShapesFlow, as VideoPairMapper gets it."""
    _, _, records, ytvis, motions = dataset
    by_frame = {(r["video_id"], r["frame_idx"]): r for r in records}
    source = pickle.loads(pickle.dumps(MovingShapesFlow()))  # picklable for data workers
    points = _centres(SIZE, SIZE)
    agree = total = 0
    for c, t, r in _pairs():
        vid = ytvis["videos"][c]["id"]
        motion = motions[vid]
        target, reference = by_frame[(vid, t)], by_frame[(vid, r)]
        flow = source(reference, target)
        assert flow.shape == (SIZE, SIZE, 2) and flow.dtype == np.float32
        ids_t, ids_r = _oracle_ids(motion, t), _oracle_ids(motion, r)
        q = points + flow.reshape(-1, 2).astype(np.float64)  # where each target point was
        # visible in the reference: inside the frame and the topmost shape there is the same object
        in_frame = (q >= 0).all(1) & (q < SIZE).all(1)
        visible = in_frame & (_topmost(motion, r, q) == ids_t.ravel())
        j = np.clip(np.floor(q).astype(int), 0, SIZE - 1)  # nearest pixel: the one containing q
        warped = ids_r[j[:, 1], j[:, 0]]
        pad = np.pad(ids_r, 1, mode="edge")
        uniform = np.ones(SIZE * SIZE, bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                uniform &= pad[j[:, 1] + 1 + dy, j[:, 0] + 1 + dx] == warped
        ok = warped == ids_t.ravel()
        # A point on a sliver thinner than a pixel (a star's tip) covers no pixel centre near it: the
        # odd one of those aside, exact.
        assert (~ok[visible & uniform]).sum() <= 2, (c, t, r)
        agree += ok[visible].sum()
        total += visible.sum()
        if t == r:
            assert (flow == 0).all()
        assert (flow[ids_t == 0] == 0).all()  # static background
    assert agree / total >= 0.99


def test_flow_equals_the_similarity_motion_inverted_by_hand(dataset):
    """For random target pixels: the point of the topmost shape there, mapped to the shape's own
    coordinates by the inverse of its frame-t similarity and back by its frame-r one."""
    _, _, records, ytvis, motions = dataset
    rng = np.random.default_rng(0)
    by_frame = {(r["video_id"], r["frame_idx"]): r for r in records}
    source = MovingShapesFlow(MetadataCatalog.get("test_moving_train").motion_root)
    checked = 0
    for c, t, r in _pairs():
        vid = ytvis["videos"][c]["id"]
        motion, target = motions[vid], by_frame[(vid, t)]
        for ref in (r, target["video_frames"][r]):  # a frame index, a frame path
            flow = source(ref, target)
            for i, jx in rng.integers(0, SIZE, size=(40, 2)):
                p = np.array([jx + 0.5, i + 0.5])
                k = _topmost(motion, t, p[None])[0]
                if k == 0:
                    expected = np.zeros(2)
                else:
                    s_t, rot_t, c_t = _pose(motion["objects"][k - 1], t)
                    s_r, rot_r, c_r = _pose(motion["objects"][k - 1], r)
                    u = rot_t.T @ (p - c_t) / s_t
                    expected = s_r * rot_r @ u + c_r - p
                    checked += 1
                np.testing.assert_allclose(flow[i, jx], expected, atol=1e-3)
    assert checked > 100


def test_flow_source_errors_name_the_problem(dataset, tmp_path):
    _, names, records, _, _ = dataset
    assert moving_shapes_flow_source(names[0]) == MovingShapesFlow(MetadataCatalog.get(names[0]).motion_root)
    other_clip = next(r for r in records if r["video_id"] != records[0]["video_id"])
    with pytest.raises(ValueError, match="not frames of the same clip"):
        MovingShapesFlow()(other_clip, records[0])
    with pytest.raises(IndexError, match="reference frame 25"):
        MovingShapesFlow()(25, records[0])
    moved = dict(records[0], file_name=str(tmp_path / "JPEGImages" / "clip0001" / "00000.png"))
    with pytest.raises(FileNotFoundError, match="motion record"):
        MovingShapesFlow()(1, moved)
    MetadataCatalog.get("test_ms_not_moving").set(thing_classes=["a"])
    with pytest.raises(KeyError, match="not a moving-shapes set"):
        moving_shapes_flow_source("test_ms_not_moving")


def test_write_clip_video_plays_the_clip(dataset, tmp_path):
    root, names, _, ytvis, _ = dataset
    path = write_clip_video(names[0], 2, str(tmp_path / "clip.mp4"))
    cap = cv2.VideoCapture(path)
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    assert len(frames) == FRAMES
    for t, name in enumerate(ytvis["videos"][2]["file_names"]):
        png = cv2.imread(str(root / "train" / "JPEGImages" / name))
        assert np.abs(frames[t].astype(int) - png).mean() < 6  # mp4v is lossy
    with pytest.raises(IndexError, match="has 2 clips"):
        write_clip_video(str(root), 5, str(tmp_path / "x.mp4"))
    # The command line (README demo): the set at --root as it is, a bad index in one line.
    ms_mod.main(["--root", str(root), "--split", "train", "--video-index", "1", "--write-video", str(tmp_path / "c.mp4")])
    assert cv2.VideoCapture(str(tmp_path / "c.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == FRAMES
    with pytest.raises(SystemExit, match="moving_shapes: .* has 2 clips; video_index 7"):
        ms_mod.main(["--root", str(root), "--video-index", "7", "--write-video", str(tmp_path / "d.mp4")])
