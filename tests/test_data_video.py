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
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from yolact_d2.data import AnnotationError
from yolact_d2.data.video import (FloFileError, VideoFrames, load_flying_chairs, load_ytvis_json,
                                  read_flo, register_flying_chairs, register_ytvis_instances, write_flo)

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
        dict(file_name=f"{root}/v3/00000.jpg", height=4, width=6, image_id=3, video_id=3, frame_idx=0,
             video_frames=[f"{root}/v3/00000.jpg"], video_frame_idx=0, annotations=[]),
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
