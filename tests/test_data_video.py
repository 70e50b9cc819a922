"""yolact_d2.data.video: .flo files against hand-written bytes, FlyingChairs and YouTube-VIS records
against records written out by hand, and the frame-pair mapper against a pair whose target is the
reference shifted by a known amount (warping the mapped reference by the mapped flow must give the
mapped target; the flow must equal the hand-transformed shift)."""
import json
import os
import pickle
import struct

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from yolact_d2.data import AnnotationError, ImageReadError
from yolact_d2.data.augmentations import (YOLACT_MEAN_BGR, RandomExpand, RandomPhotometricDistort,
                                          RandomSampleCrop, YolactResize, build_ssd_augmentation)
from yolact_d2.data.video import (FloFileError, VideoFrames, VideoPairMapper, load_flying_chairs,
                                  load_ytvis_json, read_flo, register_flying_chairs,
                                  register_ytvis_instances, write_flo)

# pycocotools on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


# ----------------------------------------------------------------------------- .flo
def _flo_bytes(width, height, values, magic=202021.25):
    return struct.pack("<f", magic) + struct.pack("<ii", width, height) + struct.pack(f"<{len(values)}f", *values)


def test_flo_hand_written_bytes_decode_to_known_values(tmp_path):
    path = tmp_path / "hand.flo"
    # 2 wide, 1 high: pixel (0, 0) = (1.5, -2), pixel (1, 0) = (0.25, unknown: 1e10)
    path.write_bytes(_flo_bytes(2, 1, [1.5, -2.0, 0.25, 1e10]))
    flow = read_flo(path)
    assert flow.dtype == np.float32 and flow.shape == (1, 2, 2)
    assert flow[0, 0].tolist() == [1.5, -2.0]
    assert flow[0, 1, 0] == 0.25 and np.isnan(flow[0, 1, 1])


def test_flo_round_trip_keeps_values_and_nan(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 20, (5, 7, 2)).astype(np.float32)
    flow[2, 3, 1] = np.nan
    path = tmp_path / "rt.flo"
    write_flo(path, flow)
    assert path.stat().st_size == 12 + 5 * 7 * 2 * 4
    # the file is exactly the layout: magic, width, height, then row-major (u, v) pairs
    assert path.read_bytes()[:12] == struct.pack("<f", 202021.25) + struct.pack("<ii", 7, 5)
    back = read_flo(path)
    np.testing.assert_array_equal(back, flow)  # NaN positions equal too
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


@pytest.mark.parametrize("content, message", [
    (_flo_bytes(2, 1, [0, 0, 0, 0], magic=1.0), "magic number 1.0"),
    (b"PIEH\x02\x00", "shorter than the 12-byte .flo header"),
    (_flo_bytes(2, 1, [0, 0, 0]), "truncated"),
    (_flo_bytes(2, 1, [0, 0, 0, 0, 0]), "oversized"),
    (_flo_bytes(0, 1, []), "width=0, height=1"),
    (_flo_bytes(2, 1 << 20, [0, 0, 0, 0]), "header is corrupt"),
])
def test_flo_bad_files_are_named_errors(tmp_path, content, message):
    path = tmp_path / "bad.flo"
    path.write_bytes(content)
    with pytest.raises(FloFileError, match=message) as e:
        read_flo(path)
    assert str(path) in str(e.value)


def test_write_flo_rejects_a_non_flow_array(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 2\).*\(4, 4, 3\)"):
        write_flo(tmp_path / "x.flo", np.zeros((4, 4, 3)))


# ----------------------------------------------------------------------------- FlyingChairs
def _chairs(tmp_path, labels=("1", "2")):
    root = tmp_path / "FlyingChairs_release"
    (root / "data").mkdir(parents=True)
    for k in range(1, len(labels) + 1):
        for i in (1, 2):
            cv2.imwrite(str(root / "data" / f"{k:05d}_img{i}.ppm"), np.full((3, 4, 3), 10 * k + i, np.uint8))
        write_flo(root / "data" / f"{k:05d}_flow.flo", np.full((3, 4, 2), k, np.float32))
    (root / "FlyingChairs_train_val.txt").write_text("\n".join(labels) + "\n")
    return root


def test_flying_chairs_records_per_split(tmp_path):
    root = _chairs(tmp_path)
    data = str(root / "data")
    pair = lambda k, image_id: dict(  # noqa: E731
        file_name=f"{data}/{k:05d}_img1.ppm", reference_file_name=f"{data}/{k:05d}_img2.ppm",
        flow_file=f"{data}/{k:05d}_flow.flo", height=3, width=4, image_id=image_id)
    assert register_flying_chairs("chairs_test_train", root) == "chairs_test_train"
    assert DatasetCatalog.get("chairs_test_train") == [pair(1, 0)]
    assert MetadataCatalog.get("chairs_test_train").evaluator_type == "flow"
    assert load_flying_chairs(root, split="val") == [pair(2, 0)]
    assert load_flying_chairs(root, split="all") == [pair(1, 0), pair(2, 1)]
    os.rename(root / "FlyingChairs_train_val.txt", root / "train_val.txt")  # the official YolactEdge layout
    assert load_flying_chairs(root, split="val") == [pair(2, 0)]


def test_flying_chairs_errors_name_the_file(tmp_path):
    root = _chairs(tmp_path, labels=("1", "1"))
    os.remove(root / "data" / "00002_flow.flo")
    with pytest.raises(FileNotFoundError, match="pair 2 .*00002_flow.flo"):
        load_flying_chairs(root)
    with pytest.raises(FileNotFoundError, match="split file not found.*nope.txt"):
        load_flying_chairs(root, split_file=str(tmp_path / "nope.txt"))
    (root / "FlyingChairs_train_val.txt").write_text("1\n3\n")
    with pytest.raises(AnnotationError, match="line 2: '3' is not 1"):
        load_flying_chairs(root)


# ----------------------------------------------------------------------------- YouTube-VIS
# A 4x6 (h x w) video of 3 annotated frames and a 1-frame video; categories with ids 5 and 2 (so
# the contiguous ids are 2 -> 0, 5 -> 1).
POLY = [[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]]
# rows 1-2, columns 2-3 set; column-major runs: 9 zeros, 2 ones, 2 zeros, 2 ones, 9 zeros
RLE = {"size": [4, 6], "counts": [9, 2, 2, 2, 9]}
RLE_COMPRESSED = {"size": [4, 6], "counts": "92207"}  # the same mask, as pycocotools' string


def _ytvis():
    return {
        "videos": [{"id": 7, "height": 4, "width": 6, "length": 3,
                    "file_names": ["v7/00000.jpg", "v7/00005.jpg", "v7/00010.jpg"]},
                   {"id": 3, "height": 4, "width": 6, "file_names": ["v3/00000.jpg"]}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 11, "video_id": 7, "category_id": 5, "iscrowd": 0,
             "segmentations": [POLY, None, RLE], "bboxes": [[1, 1, 2, 2], None, None],
             "areas": [4, None, 4]},
            {"id": 12, "video_id": 7, "category_id": 2, "iscrowd": 1,
             "segmentations": [None, None, None], "bboxes": [None, [0, 0, 3, 3], None]},
            {"id": 13, "video_id": 3, "category_id": 2, "segmentations": [RLE_COMPRESSED], "bboxes": [None]},
        ],
    }


def _write_json(tmp_path, data, name="ytvis.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_ytvis_records_exactly_as_written_by_hand(tmp_path):
    json_file = _write_json(tmp_path, _ytvis())
    root = str(tmp_path / "JPEGImages")
    name = register_ytvis_instances("ytvis_test_hand", json_file, root)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["dog", "cat"]
    assert meta.thing_dataset_id_to_contiguous_id == {2: 0, 5: 1}
    assert (meta.evaluator_type, meta.json_file, meta.image_root) == ("ytvis", json_file, root)
    v7 = [f"{root}/v7/00000.jpg", f"{root}/v7/00005.jpg", f"{root}/v7/00010.jpg"]
    xywh = BoxMode.XYWH_ABS
    expected = [
        dict(file_name=v7[0], height=4, width=6, image_id=0, video_id=7, frame_idx=0, video_frames=v7,
             video_frame_idx=0, annotations=[dict(bbox=[1.0, 1.0, 2.0, 2.0], bbox_mode=xywh, segmentation=POLY,
                                                  category_id=1, iscrowd=0, track_id=11)]),
        # frame 1: object 11 is null; the crowd has a box only
        dict(file_name=v7[1], height=4, width=6, image_id=1, video_id=7, frame_idx=1, video_frames=v7,
             video_frame_idx=1, annotations=[dict(bbox=[0.0, 0.0, 3.0, 3.0], bbox_mode=xywh, segmentation=None,
                                                  category_id=0, iscrowd=1, track_id=12)]),
        # frame 2: bbox null in the json -> the RLE's box: x 2..3, y 1..2
        dict(file_name=v7[2], height=4, width=6, image_id=2, video_id=7, frame_idx=2, video_frames=v7,
             video_frame_idx=2, annotations=[dict(bbox=[2.0, 1.0, 2.0, 2.0], bbox_mode=xywh, segmentation=RLE,
                                                  category_id=1, iscrowd=0, track_id=11)]),
        # no iscrowd key: 0; a compressed RLE with a null bbox: its box
        dict(file_name=f"{root}/v3/00000.jpg", height=4, width=6, image_id=3, video_id=3, frame_idx=0,
             video_frames=[f"{root}/v3/00000.jpg"], video_frame_idx=0, annotations=[dict(
                 bbox=[2.0, 1.0, 2.0, 2.0], bbox_mode=xywh, segmentation=RLE_COMPRESSED, category_id=0,
                 iscrowd=0, track_id=13)]),
    ]
    records = DatasetCatalog.get(name)
    assert records == expected
    assert pickle.loads(pickle.dumps(records)) == expected


def test_ytvis_all_frames_root_makes_unannotated_frames_reachable(tmp_path):
    json_file = _write_json(tmp_path, _ytvis())
    all_frames = tmp_path / "all_frames"
    for vid, count in (("v7", 11), ("v3", 2)):
        (all_frames / vid).mkdir(parents=True)
        for k in range(count):
            (all_frames / vid / f"{k:05d}.jpg").write_bytes(b"")
    records = load_ytvis_json(json_file, tmp_path / "JPEGImages", all_frames_root=all_frames)
    assert [r["video_frame_idx"] for r in records] == [0, 5, 10, 0]
    assert records[1]["video_frames"] == [str(all_frames / "v7" / f"{k:05d}.jpg") for k in range(11)]
    assert records[1]["file_name"] == str(tmp_path / "JPEGImages" / "v7" / "00005.jpg")
    os.remove(all_frames / "v7" / "00005.jpg")
    with pytest.raises(FileNotFoundError, match="video id=7 .*'v7/00005.jpg' is not among the 10 images"):
        load_ytvis_json(json_file, tmp_path / "JPEGImages", all_frames_root=all_frames)


def _broken(edit):
    data = _ytvis()
    edit(data)
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0]["segmentations"].pop(),
     "video id=7 \\('v7'\\), annotation id=11: 'segmentations' has 2 entries but the video's 'file_names' lists 3"),
    (lambda d: d["annotations"][1]["bboxes"].append(None), "annotation id=12: 'bboxes' has 4 entries"),
    (lambda d: d["annotations"][0]["areas"].pop(), "annotation id=11: 'areas' has 2 entries"),
    (lambda d: d["annotations"][0].update(video_id=99), "annotation #0 \\(id=11\\) refers to video_id=99"),
    (lambda d: d["annotations"][0].update(category_id=4), "annotation id=11: category_id 4 is not in"),
    (lambda d: d["annotations"][0]["bboxes"].__setitem__(1, [0, 0, 1, 1]),
     "annotation id=11, frame 1 \\('v7/00005.jpg'\\): has a bbox but a null segmentation"),
    (lambda d: d["annotations"][0]["segmentations"].__setitem__(2, {"size": [4, 5], "counts": [20]}),
     "frame 2 .*RLE size \\[4, 5\\] does not match the video's size \\[4, 6\\]"),
    (lambda d: d["videos"][0].pop("height"), "video id=7 .*'height' is None"),
    (lambda d: d["videos"][0].update(length=4), "'length' is 4 but 'file_names' lists 3"),
    (lambda d: d.pop("videos"), "has no 'videos' list"),
    (lambda d: d["videos"].append(dict(d["videos"][1])), "video ids \\[3\\] appear more than once"),
])
def test_ytvis_bad_json_errors_name_json_video_and_annotation(tmp_path, edit, message):
    json_file = _write_json(tmp_path, _broken(edit))
    with pytest.raises(AnnotationError, match=message) as e:
        load_ytvis_json(json_file, tmp_path)
    assert json_file in str(e.value)


def test_video_frames_is_a_small_list_of_paths():
    frames = VideoFrames("/d/v", ["a.jpg", "b.jpg"])
    assert frames == ["/d/v/a.jpg", "/d/v/b.jpg"] and frames[-1] == "/d/v/b.jpg" and len(frames) == 2
    assert pickle.loads(pickle.dumps(frames)) == frames
    assert len(pickle.dumps(frames)) < len(pickle.dumps(list(frames))) + 80


# ----------------------------------------------------------------------------- pair mapper
H, W = 48, 48
DX, DY = 3, -2          # the target is the reference moved by (DX, DY) ...
FLOW = (-DX, -DY)       # ... so each target pixel was at (x - DX, y - DY): backward flow (-DX, -DY)
OBJECT_BGR = (20, 200, 60)
BOX = (14, 12, 30, 34)  # the object in the target frame, XYXY


def _canvas():
    """A smooth colour pattern (bilinear resampling stays close to exact) with a flat object."""
    y, x = np.mgrid[0:H + 20, 0:W + 20].astype(np.float64)
    img = np.stack([128 + 60 * np.sin(x / 5 + c) * np.cos(y / 7 - c) + 40 * np.sin((x + y) / 9 + 2 * c)
                    for c in range(3)], axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


class ConstantFlow:
    """flow_source of the test pair: checks what it is given, returns the known shift."""

    def __call__(self, reference_index, target):
        assert 0 <= reference_index < target["video_frame_idx"] <= 2
        return np.broadcast_to(np.float32(FLOW), (target["height"], target["width"], 2)).copy()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A 3-frame clip: frame 0 the reference, frame 2 the annotated target = reference shifted by (DX, DY)."""
    root = tmp_path_factory.mktemp("pair")
    canvas = _canvas()
    x0, y0 = 10, 10  # the reference's window on the canvas
    x1, y1 = BOX[0] + x0 - DX, BOX[1] + y0 - DY
    canvas[y1:y1 + BOX[3] - BOX[1], x1:x1 + BOX[2] - BOX[0]] = OBJECT_BGR
    reference = canvas[y0:y0 + H, x0:x0 + W]
    target = canvas[y0 - DY:y0 - DY + H, x0 - DX:x0 - DX + W]
    assert (target[BOX[1]:BOX[3], BOX[0]:BOX[2]] == OBJECT_BGR).all()
    paths = [str(root / f"{k:05d}.png") for k in range(3)]
    for path, img in zip(paths, (reference, reference, target)):
        cv2.imwrite(path, img)
    record = dict(file_name=paths[2], height=H, width=W, image_id=5, video_id=1, frame_idx=2,
                  video_frames=paths, video_frame_idx=2, annotations=[dict(
                      bbox=[BOX[0], BOX[1], BOX[2] - BOX[0], BOX[3] - BOX[1]], bbox_mode=BoxMode.XYWH_ABS,
                      segmentation=[[BOX[0], BOX[1], BOX[2], BOX[1], BOX[2], BOX[3], BOX[0], BOX[3]]],
                      category_id=0, iscrowd=0, track_id=1)])
    return dict(record=record, paths=paths, fill=np.rint(YOLACT_MEAN_BGR).astype(np.uint8))


def _warp(reference, flow):
    """Our oracle: sample reference (C, H, W) at (x + u, y + v) for every pixel (bilinear)."""
    _, h, w = reference.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    grid = torch.stack([2 * (xs + flow[0]) / (w - 1) - 1, 2 * (ys + flow[1]) / (h - 1) - 1], dim=-1)
    return F.grid_sample(reference[None].float(), torch.nan_to_num(grid)[None], mode="bilinear",
                         align_corners=True)[0]


def _check_pair(out, expected_flow=None, photometric=False):
    image, reference, flow = out["image"], out["reference_image"], out["flow"]
    assert reference.shape == image.shape and flow.shape == (2,) + image.shape[1:] and flow.dtype == torch.float32
    known = ~torch.isnan(flow).any(0)
    # (c) the flow is the hand-transformed shift wherever it is known
    if expected_flow is not None:
        for c in range(2):
            np.testing.assert_allclose(flow[c][known].numpy(), expected_flow[c], atol=1e-4)
    # (a) warping the reference by the flow gives the target, where both frames show the original
    # content (known flow on the target, known flow 2 px around the sampled reference point)
    inner = torch.from_numpy(cv2.erode(known.numpy().astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
    warped = _warp(reference, torch.nan_to_num(flow))
    reach = _warp(inner[None].float(), torch.nan_to_num(flow))[0] > 0.999
    # ... and away from the object's sharp edges, where bilinear sampling of a non-integer shift
    # blurs either frame differently
    mask = out["instances"].gt_masks.tensor.any(0).numpy().astype(np.uint8)
    edge = cv2.dilate(mask, np.ones((5, 5), np.uint8)) - cv2.erode(mask, np.ones((5, 5), np.uint8))
    compare = known & reach & torch.from_numpy(edge == 0)
    assert compare.sum() >= 40
    diff = (warped - image.float()).abs().amax(0)[compare]
    assert diff.mean() < 0.75 and torch.quantile(diff, 0.95) < 2, (diff.mean(), diff.max())
    # (b) every instance's box holds its mask, which is the object's pixels
    inst = out["instances"]
    assert len(inst) == 1
    for box, mask in zip(inst.gt_boxes.tensor, inst.gt_masks.tensor):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(xs) > 0
        x0, y0, x1, y1 = box.tolist()
        assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1
        assert abs(xs.min() - x0) <= 2 and abs(xs.max() + 1 - x1) <= 2 and abs(ys.max() + 1 - y1) <= 2
        if not photometric:
            colour = image[:, mask].float().T
            near = (colour - torch.tensor(OBJECT_BGR, dtype=torch.float32)).abs().amax(1) < 40
            assert near.float().mean() > 0.85


def _map(pair, augs, seed=0, **kw):
    mapper = VideoPairMapper(True, augs, reference_gap=(2, 2), flow_source=ConstantFlow(), **kw)
    np.random.seed(seed)
    out = mapper(pair["record"])
    assert out is not None and out["frame_gap"] == 2
    return out


def test_pair_mapper_without_augmentation_gives_the_pair_itself(pair):
    out = _map(pair, [])
    np.testing.assert_array_equal(out["reference_image"].numpy().transpose(1, 2, 0), cv2.imread(pair["paths"][0]))
    _check_pair(out, FLOW)


def test_pair_mapper_flip(pair):
    out = _map(pair, [T.RandomFlip(prob=1.0)])
    _check_pair(out, (-FLOW[0], FLOW[1]))  # mirrored: u negated


def test_pair_mapper_resize_scales_the_flow(pair):
    out = _map(pair, [YolactResize(96)])  # squash 48x48 -> 96x96: (sx, sy) = (2, 2)
    assert out["image"].shape == (3, 96, 96)
    _check_pair(out, (2 * FLOW[0], 2 * FLOW[1]))
    out = _map(pair, [YolactResize(64, preserve_aspect_ratio=True)])  # 48 -> 64, no padding at 1:1
    _check_pair(out, (FLOW[0] * 64 / 48, FLOW[1] * 64 / 48))
    out = _map(pair, [T.Resize((96, 144))])  # Detectron2's own (PIL) resize: (sx, sy) = (3, 2)
    _check_pair(out, (3 * FLOW[0], 2 * FLOW[1]))


def test_pair_mapper_expand_pads_the_flow_with_nan(pair):
    out = _map(pair, [RandomExpand(max_ratio=2.0, prob=1.0)], seed=3)
    _check_pair(out, FLOW)
    # unknown flow exactly where the canvas is padding (mean colour)
    padding = (out["image"].permute(1, 2, 0).numpy() == pair["fill"]).all(2)
    assert padding.any()
    np.testing.assert_array_equal(np.isnan(out["flow"].numpy()).any(0), padding)


def test_pair_mapper_ssd_crop_keeps_the_flow(pair):
    for seed in range(3):
        out = _map(pair, [RandomSampleCrop(min_ious=(None, 0.0))], seed=seed)
        _check_pair(out, FLOW)
        assert not torch.isnan(out["flow"]).any()


def test_pair_mapper_photometric_is_shared_by_both_frames(pair):
    for seed in range(4):
        out = _map(pair, [RandomPhotometricDistort(prob=1.0)], seed=seed)
        _check_pair(out, FLOW, photometric=True)


def test_pair_mapper_full_ssd_augmentation(pair):
    # Expand at most 2x into a 96 input: no shrinking, whose aliasing no warp could reproduce.
    for seed in range(6):
        out = _map(pair, build_ssd_augmentation(96, expand_max_ratio=2.0), seed=seed)
        assert out["image"].shape == (3, 96, 96)
        _check_pair(out, photometric=True)
        # the flow is the shift scaled per axis: constant over the known pixels, |v| / |u| = sy / sx
        known = ~torch.isnan(out["flow"]).any(0)
        u, v = out["flow"][0][known], out["flow"][1][known]
        assert float(u.std()) < 1e-4 and float(v.std()) < 1e-4 and float(v.mean()) > 0


def test_pair_mapper_eval_mode_resizes_only_and_is_deterministic(pair):
    mapper = VideoPairMapper(False, build_ssd_augmentation(96), reference_gap=(2, 2), flow_source=ConstantFlow())
    a, b = mapper(pair["record"]), mapper(pair["record"])
    assert "instances" not in a and a["image"].shape == (3, 96, 96) and a["frame_gap"] == 2
    target = cv2.resize(cv2.imread(pair["paths"][2]), (96, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(a["image"].numpy().transpose(1, 2, 0), target)
    for key in ("image", "reference_image", "flow"):
        assert torch.equal(a[key], b[key])
    np.testing.assert_allclose(a["flow"][0].numpy(), 2 * FLOW[0])
    # eval gaps cycle through reference_gap with the image id; clipped to the first frame
    gaps = VideoPairMapper(False, reference_gap=(1, 3))
    assert [gaps(dict(pair["record"], image_id=i, annotations=[]))["frame_gap"] for i in range(3)] == [1, 2, 2]


def test_pair_mapper_first_frame_and_missing_reference(pair, tmp_path):
    record = dict(pair["record"], video_frame_idx=0, frame_idx=0, file_name=pair["paths"][0])
    out = VideoPairMapper(True, [], flow_source=ConstantFlow())(record)
    assert out["frame_gap"] == 0 and torch.equal(out["reference_image"], out["image"])
    assert torch.equal(out["flow"], torch.zeros(2, H, W))  # the pair is one frame: zero flow, not asked
    gone = dict(pair["record"], video_frames=[str(tmp_path / "gone.png")] + pair["paths"][1:])
    with pytest.raises(ImageReadError, match="reference frame .*gone.png.* \\(2 frames before\\) of .*00002.png"):
        VideoPairMapper(True, [], reference_gap=(2, 2))(gone)


def test_pair_mapper_flow_source_of_the_wrong_shape_is_an_error(pair):
    mapper = VideoPairMapper(True, [], reference_gap=(2, 2), flow_source=lambda r, t: np.zeros((H, W + 1, 2)))
    with pytest.raises(ValueError, match=r"shape \(48, 49, 2\) for .*00002.png.*\(48, 48, 2\)"):
        mapper(pair["record"])


def test_pair_mapper_flying_chairs_pair(tmp_path):
    root = _chairs(tmp_path, labels=("1",))
    record = load_flying_chairs(root)[0]
    out = VideoPairMapper(True, [YolactResize(8)])(record)  # 3x4 -> 8x8: (sx, sy) = (2, 8/3)
    assert set(out) >= {"image", "reference_image", "flow"} and "instances" not in out
    assert out["image"][0, 0, 0] == 11 and out["reference_image"][0, 0, 0] == 12  # img1 target, img2 reference
    np.testing.assert_allclose(out["flow"][0].numpy(), 2.0, rtol=1e-6)
    np.testing.assert_allclose(out["flow"][1].numpy(), 8 / 3, rtol=1e-6)


class _CatalogInWorker(torch.utils.data.Dataset):
    def __init__(self, name):
        self.name = name

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return DatasetCatalog.get(self.name)


def _as_is(batch):
    return batch


def test_ytvis_dataset_loads_and_maps_in_a_dataloader_worker(tmp_path, pair):
    """DatasetCatalog.get inside a worker process, its records sent back (picklable); then
    Detectron2's test loader mapping pairs in a worker."""
    data = {"videos": [{"id": 1, "height": H, "width": W, "file_names": [os.path.basename(p) for p in pair["paths"]]}],
            "categories": [{"id": 1, "name": "box"}], "annotations": []}
    name = register_ytvis_instances("ytvis_test_worker", _write_json(tmp_path, data),
                                    os.path.dirname(pair["paths"][0]))
    in_worker = next(iter(torch.utils.data.DataLoader(_CatalogInWorker(name), batch_size=None, num_workers=1,
                                                      collate_fn=_as_is)))
    assert in_worker == DatasetCatalog.get(name) and len(in_worker) == 3
    assert isinstance(in_worker[0]["video_frames"], VideoFrames)
    mapper = VideoPairMapper(False, [YolactResize(32)], reference_gap=(2, 2), flow_source=ConstantFlow())
    loader = build_detection_test_loader(DatasetCatalog.get(name), mapper=mapper, num_workers=1)
    out = [batch[0] for batch in loader]
    assert [o["frame_gap"] for o in out] == [0, 1, 2]
    np.testing.assert_allclose(out[2]["flow"][0].numpy(), FLOW[0] * 32 / W)
    assert torch.equal(out[1]["reference_image"], out[0]["image"])
