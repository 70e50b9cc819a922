"""Video data for YolactEdge: Middlebury .flo files, FlyingChairs and YouTube-VIS datasets, and the
(reference, target) frame-pair mapper.

Flow convention everywhere in yolact_d2: *backward* flow in pixels, float32 (H, W, 2) here and
(2, H, W) after the mapper, such that ``target(x, y) ~= reference(x + u, y + v)``: for each pixel
of the target (current, annotated) frame, where it was in the reference (keyframe) frame; NaN where
unknown. A FlyingChairs ``.flo`` is forward flow img1 -> img2, i.e. exactly this with target =
img1, reference = img2. Conversion to YolactEdge's own flow units happens in the model, never here.

Why our own YouTube-VIS reader: Detectron2 has none, and pycocotools' ``ytvos`` (what the official
code uses) is not on the registry; records are one Detectron2 dict per annotated frame, with the
video's frame list, so reference frames (also unannotated ones) can be picked by the mapper.
"""
import collections
import copy
import functools
import logging
import os
import re
from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, TransformList

from .augmentations import InstanceAugInput, YolactResize
from .datasets import category_metadata, json_dataset_metadata, load_json, register_dataset
from .mapper import AnnotationError, ImageReadError, YolactDatasetMapper, check_polygons, check_rle

__all__ = [
    "FloFileError",
    "read_flo",
    "write_flo",
    "register_flying_chairs",
    "load_flying_chairs",
    "VideoFrames",
    "check_ytvis_json",
    "load_ytvis_json",
    "register_ytvis_instances",
    "transform_flow",
    "VideoPairMapper",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- .flo files
FLO_MAGIC = np.float32(202021.25)  # the bytes "PIEH" read as a little-endian float32
_FLO_HEADER_BYTES = 12
_FLO_MAX_SIDE = 1 << 15  # no flow data set comes near 32768 px a side; larger is a corrupt header
_FLO_UNKNOWN = 1e9  # Middlebury: components above this mean "no flow known"


class FloFileError(ValueError):
    """A .flo file that cannot be read; the message names the file and what was found."""


def _flo_header(path, f):
    header = f.read(_FLO_HEADER_BYTES)
    if len(header) < _FLO_HEADER_BYTES:
        raise FloFileError(f"{path!r}: {len(header)} bytes, shorter than the 12-byte .flo header "
                           "(magic, width, height); the file is truncated or not a .flo file.")
    magic = float(np.frombuffer(header[:4], "<f4")[0])
    if magic != FLO_MAGIC:
        raise FloFileError(f"{path!r}: magic number {magic} (bytes {header[:4]!r}), expected "
                           f"{float(FLO_MAGIC)} (b'PIEH'); not a Middlebury .flo file.")
    width, height = (int(v) for v in np.frombuffer(header[4:], "<i4"))
    if not (0 < width <= _FLO_MAX_SIDE and 0 < height <= _FLO_MAX_SIDE):
        raise FloFileError(f"{path!r}: header size width={width}, height={height} is not in "
                           f"1..{_FLO_MAX_SIDE}; the header is corrupt.")
    return height, width


def read_flo_size(path):
    """(height, width) from a .flo file's header, checking the file's length against it."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        height, width = _flo_header(path, f)
        size = os.fstat(f.fileno()).st_size
    expected = _FLO_HEADER_BYTES + 8 * height * width
    if size != expected:
        what = "truncated" if size < expected else "oversized (trailing bytes)"
        raise FloFileError(f"{path!r}: {size} bytes, but a {width}x{height} (width x height) flow "
                           f"needs {expected} (12-byte header + {height}*{width}*2 float32): {what}.")
    return height, width


def read_flo(path):
    """Read a Middlebury .flo file: float32 (H, W, 2) array of (u, v) per pixel, NaN where the file
    marks the flow unknown (a component above 1e9). Raises FloFileError naming the file for a wrong
    magic number, an implausible size or a length that does not match the header."""
    path = os.fspath(path)
    height, width = read_flo_size(path)
    with open(path, "rb") as f:
        f.seek(_FLO_HEADER_BYTES)
        flow = np.fromfile(f, "<f4", 2 * height * width).reshape(height, width, 2).astype(np.float32)
    flow[np.abs(flow) > _FLO_UNKNOWN] = np.nan
    return flow


def write_flo(path, flow):
    """Write a float (H, W, 2) flow as a Middlebury .flo file (atomically: a reader never sees a
    partial file). NaN (unknown) is written as NaN, which read_flo reads back as NaN."""
    path = os.fspath(path)
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2 or 0 in flow.shape:
        raise ValueError(f"write_flo({path!r}): flow must be an (H, W, 2) array, got shape {flow.shape}.")
    if max(flow.shape[:2]) > _FLO_MAX_SIDE:
        raise ValueError(f"write_flo({path!r}): {flow.shape[1]}x{flow.shape[0]} exceeds the "
                         f"{_FLO_MAX_SIDE}-pixel side read_flo accepts.")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(FLO_MAGIC.astype("<f4").tobytes())
        f.write(np.array([flow.shape[1], flow.shape[0]], "<i4").tobytes())
        f.write(np.ascontiguousarray(flow, dtype="<f4").tobytes())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- FlyingChairs
_CHAIRS_PAIR = re.compile(r"^(\d+)_img1\.ppm$")
_CHAIRS_SPLITS = {"train": 1, "val": 2}


def _chairs_data_dir(root):
    """The folder holding NNNNN_img1.ppm / _img2.ppm / _flow.flo: root/data (the release's layout)
    or root itself."""
    data = os.path.join(root, "data")
    return data if os.path.isdir(data) else root


def _chairs_split_ids(split_file):
    """1-based pair numbers -> split label (1 train, 2 val), from FlyingChairs_train_val.txt (one
    label per line, line k for pair k)."""
    try:
        with open(split_file) as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"FlyingChairs split file not found: {split_file!r}. Put FlyingChairs_train_val.txt "
            "(from the FlyingChairs site) next to data/, pass split_file=, or use split='all'.") from e
    while lines and not lines[-1]:
        lines.pop()
    labels = {}
    for k, line in enumerate(lines, 1):
        if line not in ("1", "2"):
            raise AnnotationError(f"{split_file!r} line {k}: {line[:40]!r} is not 1 (train) or 2 (val).")
        labels[k] = int(line)
    return labels


def load_flying_chairs(root, split_file=None, split="train"):
    """FlyingChairs records: {file_name (img1 = target), reference_file_name (img2), flow_file,
    height, width, image_id}, in pair order. `split`: "train" / "val" (the split file's labels 1 /
    2, as official) or "all". Every selected pair's three files must exist (named error)."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"FlyingChairs split must be 'train', 'val' or 'all', got {split!r}.")
    root = os.path.abspath(os.fspath(root))
    data = _chairs_data_dir(root)
    if not os.path.isdir(data):
        raise FileNotFoundError(f"FlyingChairs folder not found: {root!r} (expected "
                                "FlyingChairs_release/ with data/NNNNN_img1.ppm ...).")
    if split == "all":
        numbers = sorted(int(m.group(1)) for m in map(_CHAIRS_PAIR.match, os.listdir(data)) if m)
        if not numbers:
            raise FileNotFoundError(f"No FlyingChairs pairs (NNNNN_img1.ppm) in {data!r}.")
    else:
        if not split_file:  # the download's name, or the official YolactEdge layout's
            candidates = [os.path.join(root, n) for n in ("FlyingChairs_train_val.txt", "train_val.txt")]
            split_file = next((c for c in candidates if os.path.isfile(c)), candidates[0])
        labels = _chairs_split_ids(split_file)
        numbers = [k for k, label in labels.items() if label == _CHAIRS_SPLITS[split]]
    records = []
    for number in numbers:
        stem = os.path.join(data, f"{number:05d}")
        files = (f"{stem}_img1.ppm", f"{stem}_img2.ppm", f"{stem}_flow.flo")
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"FlyingChairs pair {number} ({split} split) is missing "
                                        f"{path!r}; the download is incomplete.")
        height, width = read_flo_size(files[2])
        records.append(dict(file_name=files[0], reference_file_name=files[1], flow_file=files[2],
                            height=height, width=width, image_id=len(records)))
    return records


def register_flying_chairs(name, root, split_file=None, split="train"):
    """Register FlyingChairs (`root` = FlyingChairs_release, holding data/ and
    FlyingChairs_train_val.txt or train_val.txt) as `name`; records as load_flying_chairs gives them, loaded when
    first read. Metadata: evaluator_type="flow". Returns `name`."""
    root = os.path.abspath(os.fspath(root))
    split_file = os.path.abspath(split_file) if split_file else None
    meta = dict(image_root=_chairs_data_dir(root), split=split, evaluator_type="flow")
    if split_file:
        meta["split_file"] = split_file
    return register_dataset(name, functools.partial(load_flying_chairs, root, split_file, split), meta)


# ----------------------------------------------------------------------------- YouTube-VIS
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


class VideoFrames(Sequence):
    """A video's frame paths, in order: a read-only list of absolute paths stored as (folder,
    names) so that per-frame records stay small when pickled (Detectron2 serialises every record;
    YouTube-VIS with all frames has ~140 frames a video). Equal to a list of the same paths."""

    __slots__ = ("root", "names")

    def __init__(self, root, names):
        self.root = os.fspath(root)
        self.names = tuple(names)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [os.path.join(self.root, n) for n in self.names[index]]
        return os.path.join(self.root, self.names[index])

    def __eq__(self, other):
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self):
        return f"VideoFrames({self.root!r}, {len(self)} frames)"

    def __getstate__(self):
        return self.root, self.names

    def __setstate__(self, state):
        self.root, self.names = state


def _video_where(json_file, video):
    first = (video.get("file_names") or ["?"])[0]
    return f"{json_file!r}: video id={video.get('id')} ({os.path.dirname(first) or first!r})"


def _check_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_video(json_file, video, k):
    if not isinstance(video, dict):
        raise AnnotationError(f"{json_file!r}: videos[{k}] is a {type(video).__name__}, not an object.")
    where = _video_where(json_file, video)
    for key in ("id", "height", "width"):
        if not _check_int(video.get(key)) or (key != "id" and video[key] <= 0):
            raise AnnotationError(f"{where}: {key!r} is {video.get(key)!r}; every video needs an integer "
                                  "'id' and positive integer 'height' and 'width'.")
    names = video.get("file_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise AnnotationError(f"{where}: 'file_names' must be a non-empty list of frame paths "
                              "(relative to image_root).")
    if "length" in video and video["length"] != len(names):
        raise AnnotationError(f"{where}: 'length' is {video['length']} but 'file_names' lists "
                              f"{len(names)} frames.")


def _check_track(json_file, ann, video, cat_ids):
    """Check one YouTube-VIS annotation (a track) against its video."""
    where = f"{_video_where(json_file, video)}, annotation id={ann.get('id')}"
    if not _check_int(ann.get("id")):
        raise AnnotationError(f"{where}: 'id' {ann.get('id')!r} is not an integer (the track id).")
    if ann.get("category_id") not in cat_ids:
        raise AnnotationError(f"{where}: category_id {ann.get('category_id')!r} is not in the dataset's "
                              f"categories (ids {sorted(cat_ids)}). Fix the annotation or add the category.")
    n = len(video["file_names"])
    if "segmentations" not in ann and "bboxes" not in ann:
        raise AnnotationError(f"{where}: has neither 'segmentations' nor 'bboxes' (one entry per frame).")
    for key in ("segmentations", "bboxes", "areas"):
        if key in ann and (not isinstance(ann[key], list) or len(ann[key]) != n):
            got = len(ann[key]) if isinstance(ann[key], list) else type(ann[key]).__name__
            raise AnnotationError(f"{where}: {key!r} has {got} entries but the video's 'file_names' "
                                  f"lists {n} frames; there must be one entry (or null) per frame.")
    segms = ann.get("segmentations") or [None] * n
    boxes = ann.get("bboxes") or [None] * n
    crowd = bool(ann.get("iscrowd", 0))
    hw = [video["height"], video["width"]]
    for t, (segm, box) in enumerate(zip(segms, boxes)):
        at = f"{where}, frame {t} ({video['file_names'][t]!r})"
        if box is not None and (not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and np.isfinite(v) for v in box)):
            raise AnnotationError(f"{at}: bbox {box!r} is not [x, y, width, height] of 4 finite numbers.")
        if segm is None:
            if box is not None and not crowd:
                raise AnnotationError(f"{at}: has a bbox but a null segmentation; a non-crowd object "
                                      "needs a mask in every frame where it is annotated (null both, "
                                      "or give the mask).")
        elif isinstance(segm, list):
            check_polygons(segm, at)
        elif isinstance(segm, dict):
            size = list(segm.get("size", []))
            if size != hw:
                raise AnnotationError(f"{at}: RLE size {size} does not match the video's size {hw} "
                                      "(height, width).")
            check_rle(segm, at)
        else:
            raise AnnotationError(f"{at}: segmentation of type {type(segm).__name__} is neither a "
                                  "polygon list nor an RLE dict.")


def check_ytvis_json(json_file):
    """Raise AnnotationError (naming the json, the video, the annotation and the frame) for an
    unusable YouTube-VIS json: missing 'videos' / 'annotations' / 'categories', a video without
    integer id / height / width or frame list, repeated video ids, per-frame 'segmentations' /
    'bboxes' / 'areas' lists whose length differs from the video's 'file_names', an unknown
    video_id or category_id, a bad bbox / polygon / RLE, an RLE of the wrong size, a bbox on a
    frame whose segmentation is null (non-crowd). Returns the parsed json."""
    data = load_json(json_file, "YouTube-VIS annotation file")
    if not isinstance(data, dict):
        raise AnnotationError(f"{json_file!r} holds a json {type(data).__name__}, not a YouTube-VIS object.")
    for key in ("videos", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{json_file!r} has no {key!r} list; not a YouTube-VIS instances file "
                                  "(videos[].file_names, annotations[].segmentations/bboxes, categories).")
    if not data["videos"]:
        raise AnnotationError(f"{json_file!r} has an empty 'videos' list: there is nothing to load.")
    cat_ids = set(category_metadata(data["categories"], json_file)["thing_dataset_id_to_contiguous_id"])
    for k, video in enumerate(data["videos"]):
        _check_video(json_file, video, k)
    counts = collections.Counter(v["id"] for v in data["videos"])
    repeated = sorted(i for i, c in counts.items() if c > 1)
    if repeated:
        raise AnnotationError(f"{json_file!r}: video ids {repeated} appear more than once in 'videos'.")
    videos = {v["id"]: v for v in data["videos"]}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("video_id") not in videos:
            vid = ann.get("video_id") if isinstance(ann, dict) else None
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            raise AnnotationError(f"{json_file!r}: annotation #{k} (id={ann_id}) refers to video_id="
                                  f"{vid!r}, which is not in 'videos'.")
        _check_track(json_file, ann, videos[ann["video_id"]], cat_ids)
    if not data["annotations"]:
        logger.warning(f"{json_file!r} has no annotations: usable for inference, not to train or evaluate.")
    return data


def _mask_bbox(segm, height, width):
    """XYWH box of a polygon list / RLE (pycocotools, as COCO does)."""
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects([list(map(float, p)) for p in segm], height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_util.frPyObjects(segm, height, width)
    else:
        rle = segm
    return [float(v) for v in mask_util.toBbox(rle)]


def _all_frames(all_frames_root, json_file, video):
    """The video's frames from the all-frames folder: VideoFrames over the sorted image files in
    all_frames_root/<the folder of file_names[0]>, and the position of each annotated frame."""
    folder = os.path.dirname(video["file_names"][0])
    directory = os.path.join(all_frames_root, folder)
    try:
        names = sorted(n for n in os.listdir(directory) if n.lower().endswith(_IMAGE_EXTENSIONS))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{_video_where(json_file, video)}: its all-frames folder {directory!r} "
                                "does not exist (all_frames_root is wrong, or the video is missing).") from e
    index = {n: i for i, n in enumerate(names)}
    positions = []
    for name in video["file_names"]:
        if os.path.dirname(name) != folder or os.path.basename(name) not in index:
            raise FileNotFoundError(f"{_video_where(json_file, video)}: annotated frame {name!r} is not "
                                    f"among the {len(names)} images of {directory!r}.")
        positions.append(index[os.path.basename(name)])
    return VideoFrames(directory, names), positions


def load_ytvis_json(json_file, image_root, dataset_name=None, all_frames_root=None):
    """Check (check_ytvis_json) and read a YouTube-VIS json into Detectron2 records, one per entry
    of a video's 'file_names', in json order:

        file_name (absolute), height, width, image_id (the record's index), video_id (json id),
        frame_idx (index in the video's file_names), video_frames (VideoFrames: the frames reference
        frames are picked from), video_frame_idx (the record's position in video_frames),
        annotations: [{bbox (XYWH_ABS), bbox_mode, segmentation (as in the json), category_id
        (contiguous 0-based, sorted-id order as Detectron2's COCO loader), iscrowd, track_id (the
        json annotation id)}] for the objects not null on that frame.

    A segmentation on a frame whose bbox is null gets the mask's bbox. Without `all_frames_root`,
    video_frames are the annotated frames (file_names under image_root). With it, video_frames are
    every image in all_frames_root/<video folder> (YouTube-VIS train jsons list every 5th frame;
    the "all frames" download has the rest), so a reference 2-5 frames earlier can be an
    unannotated frame, as in the official training."""
    from detectron2.data import MetadataCatalog
    from detectron2.structures import BoxMode

    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    data = check_ytvis_json(json_file)
    id_map = category_metadata(data["categories"], json_file)["thing_dataset_id_to_contiguous_id"]
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        registered = meta.get("thing_dataset_id_to_contiguous_id", None)
        if registered is not None and registered != id_map:
            raise AnnotationError(f"Dataset {dataset_name!r}: the categories of {json_file!r} changed "
                                  "after it was registered; register it again (e.g. reload the config).")
        if registered is None:
            meta.set(**category_metadata(data["categories"], json_file))
    tracks = collections.defaultdict(list)
    for ann in data["annotations"]:
        tracks[ann["video_id"]].append(ann)
    records = []
    for video in data["videos"]:
        names, h, w = video["file_names"], video["height"], video["width"]
        if all_frames_root is None:
            frames, positions = VideoFrames(image_root, names), list(range(len(names)))
        else:
            frames, positions = _all_frames(os.fspath(all_frames_root), json_file, video)
        for t, name in enumerate(names):
            annotations = []
            for ann in tracks[video["id"]]:
                segm = (ann.get("segmentations") or [None] * len(names))[t]
                box = (ann.get("bboxes") or [None] * len(names))[t]
                if segm is None and box is None:
                    continue
                annotations.append(dict(
                    bbox=[float(v) for v in box] if box is not None else _mask_bbox(segm, h, w),
                    bbox_mode=BoxMode.XYWH_ABS, segmentation=segm,
                    category_id=id_map[ann["category_id"]], iscrowd=int(bool(ann.get("iscrowd", 0))),
                    track_id=ann["id"]))
            records.append(dict(file_name=os.path.join(image_root, name), height=h, width=w,
                                image_id=len(records), video_id=video["id"], frame_idx=t,
                                video_frames=frames, video_frame_idx=positions[t],
                                annotations=annotations))
    return records


def register_ytvis_instances(name, json_file, image_root, metadata=None, all_frames_root=None):
    """Register a YouTube-VIS-format dataset as `name`: records as load_ytvis_json gives them,
    checked and loaded when first read. Metadata: thing_classes and
    thing_dataset_id_to_contiguous_id (read now from the json's categories when it exists),
    json_file, image_root, evaluator_type="ytvis", plus `metadata`. Re-registering the same files is
    a no-op. Returns `name`."""
    json_file, image_root = os.path.abspath(os.fspath(json_file)), os.path.abspath(os.fspath(image_root))
    all_frames_root = os.path.abspath(os.fspath(all_frames_root)) if all_frames_root else None
    extra = dict(all_frames_root=all_frames_root) if all_frames_root else {}
    meta = json_dataset_metadata(name, json_file, image_root, "ytvis", dict(extra, **(metadata or {})))
    loader = functools.partial(load_ytvis_json, json_file, image_root, name, all_frames_root)
    return register_dataset(name, loader, meta)


# ----------------------------------------------------------------------------- frame-pair mapper
def _steps(transforms):
    """The flat list of a Transform / TransformList's steps."""
    if transforms is None:
        return []
    if isinstance(transforms, TransformList):
        return [s for t in transforms.transforms for s in _steps(t)]
    return [transforms]


def _linear_part(t, h, w):
    """The (2, 2) Jacobian of a transform's coordinate map (exact for the affine ones: resize,
    flip, crop, pad), and whether that map is the identity."""
    p = np.array([[0.37 * w, 0.61 * h], [0.37 * w + 1, 0.61 * h], [0.37 * w, 0.61 * h + 1]], np.float64)
    q = np.asarray(t.apply_coords(p.copy()), np.float64)
    jacobian = np.stack([q[1] - q[0], q[2] - q[0]], axis=1)
    return jacobian, np.allclose(q, p)


def transform_flow(transforms, flow):
    """Apply the geometric part of `transforms` (what was applied to both frames) to a backward
    flow (H, W, 2) in pixels, NaN where unknown. Each step resamples the field like the image
    (t.apply_image: bilinear for resizes, exact for flips / crops / pads) and maps the vectors by
    the step's Jacobian (a resize by (sx, sy) scales (u, v) by (sx, sy), a horizontal flip negates
    u, crops and pads keep them). Pixels that do not come from known flow (padding; bilinear
    neighbours of unknown pixels) are NaN. Steps that leave coordinates and size alone (photometric
    ones) are skipped. Returns float32 (H', W', 2)."""
    flow = np.asarray(flow, np.float32)
    known = ~np.isnan(flow).any(axis=2)
    # (u, v, known) resampled together, one call a step: "known" stays exactly 1 only where every
    # contributing pixel was known; padding gets the transform's fill (an image colour, not 1).
    state = np.dstack([np.where(known[..., None], flow, 0.0), known]).astype(np.float32)
    # Resampling is linear in the values and each step's Jacobian is constant: the vectors are
    # mapped once, by the product of the Jacobians, at the end (on the smallest array).
    jacobian = np.eye(2)
    for t in _steps(transforms):
        if isinstance(t, NoOpTransform):
            continue
        h, w = state.shape[:2]
        step, identity = _linear_part(t, h, w)
        if identity and t.apply_segmentation(np.zeros((h, w), np.uint8)).shape == (h, w):
            continue  # photometric: colours only
        state = np.ascontiguousarray(t.apply_image(state), dtype=np.float32)  # crops / flips give views
        jacobian = step @ jacobian
    out = (state[..., :2] @ jacobian.T.astype(np.float32)).astype(np.float32)
    out[np.abs(state[..., 2] - 1.0) > 1e-4] = np.nan
    return out


def _resize_steps(augmentations):
    """The resize-type augmentations of a list (what eval mode keeps)."""
    return [a for a in augmentations if isinstance(a, (YolactResize, T.Resize, T.ResizeShortestEdge))]


class VideoPairMapper(YolactDatasetMapper):
    """A (reference, target) frame pair under one augmentation, for YolactEdge.

    Returns the dict YolactDatasetMapper gives for the target frame (``image`` uint8 (3, H, W),
    ``instances``, ``crowd_boxes``, ``height``, ``width``, ``file_name``, ``image_id``, ... ; in
    eval mode no instances) plus:

    - ``reference_image``: uint8 (3, H, W), the frame `k` earlier in ``video_frames`` (k uniform in
      `reference_gap`, inclusive, clipped to the clip's first frame) under the SAME transforms as
      the target (the TransformList the target was augmented with, photometric parameters
      included, is re-applied to it);
    - ``frame_gap``: the k actually used (0: the target is the clip's first frame, the reference is
      the target itself); 1 for a FlyingChairs pair;
    - ``flow`` (when a flow is known): float32 (2, H, W), backward flow in pixels of the mapped
      image (``target(x, y) ~= reference(x + u, y + v)``), transformed with the same geometry
      (transform_flow); NaN where unknown.

    Records: YouTube-VIS records (register_ytvis_instances; ``video_frames`` and
    ``video_frame_idx``); records without ``video_frames`` pair the image with itself (gap 0);
    FlyingChairs records (``flow_file``: ``file_name`` = img1 = target, ``reference_file_name`` =
    img2) map to ``image``, ``reference_image``, ``flow`` only.

    Args:
        is_train: augment with `augmentations` and build targets; in eval mode only the resize-type
            ones among `augmentations` are applied, and the gap is deterministic (cycling through
            `reference_gap` with the record's image_id), so validation pairs are reproducible.
        augmentations, image_format, mask_format, num_classes, **kwargs: as YolactDatasetMapper
            (e.g. build_ssd_augmentation(size)).
        reference_gap: (lo, hi) frames between reference and target (official fine-tuning: 2, 5).
        flow_source: None, or a callable ``flow_source(reference_index, target_record)`` ->
            float32 (H, W, 2) backward flow from frame ``target_record["video_frames"]
            [reference_index]`` to the target, in pixels of the original frames (H, W = the
            record's height, width), NaN where unknown; or None when it does not know that pair
            (the output then has no ``flow``). It must be picklable (DataLoader workers). Not
            called for gap 0: the flow is then exactly zero.
    """

    def __init__(self, is_train=True, augmentations=(), image_format="BGR", mask_format="bitmask",
                 num_classes=None, reference_gap=(2, 5), flow_source=None, **kwargs):
        if isinstance(augmentations, T.AugmentationList):
            augmentations = augmentations.augs
        augmentations = list(augmentations or [])
        if not is_train:
            augmentations = _resize_steps(augmentations)
        super().__init__(is_train, augmentations, image_format, mask_format, num_classes, **kwargs)
        lo, hi = (int(v) for v in reference_gap)
        if not 0 <= lo <= hi:
            raise ValueError(f"VideoPairMapper: reference_gap must be (lo, hi) with 0 <= lo <= hi, got "
                             f"{tuple(reference_gap)}.")
        if flow_source is not None and not callable(flow_source):
            raise TypeError(f"VideoPairMapper: flow_source must be a callable(reference_index, "
                            f"target_record) or None, got {type(flow_source).__name__}.")
        self.reference_gap = (lo, hi)
        self.flow_source = flow_source

    # ------------------------------------------------------------------ reference frame
    def _pick_reference(self, record):
        """(index of the reference in video_frames, gap) for a video record."""
        position = int(record.get("video_frame_idx", record.get("frame_idx", 0)))
        lo, hi = self.reference_gap
        if self.is_train:
            k = int(np.random.randint(lo, hi + 1))
        else:
            k = lo + int(record.get("image_id", 0)) % (hi - lo + 1)
        reference = max(0, position - k)
        return reference, position - reference

    def _read_reference(self, path, record, what):
        try:
            return self._read_image(dict(file_name=path, height=record.get("height"),
                                         width=record.get("width"), image_id=record.get("image_id")))
        except ImageReadError as e:
            raise ImageReadError(f"{what} of {record.get('file_name')!r} (video_id="
                                 f"{record.get('video_id')}): {e}") from e

    def _flow_of(self, reference_index, gap, record):
        if gap == 0:
            return np.zeros((record["height"], record["width"], 2), np.float32)
        if "flow_file" in record:
            flow = read_flo(record["flow_file"])
            source = f"flow file {record['flow_file']!r}"
        elif self.flow_source is not None:
            flow = self.flow_source(reference_index, record)
            source = f"flow_source {self.flow_source!r}"
        else:
            return None
        if flow is None:
            return None
        flow = np.asarray(flow, np.float32)
        expected = (record.get("height"), record.get("width"), 2)
        if flow.shape != expected:
            raise ValueError(f"{source} gave a flow of shape {flow.shape} for {record.get('file_name')!r}; "
                             f"expected (height, width, 2) = {expected}, backward flow at the frame's size.")
        return flow

    # ------------------------------------------------------------------ main
    def __call__(self, record):
        if "flow_file" in record:
            return self._map_flow_pair(record)
        if record.get("video_frames"):
            reference_index, gap = self._pick_reference(record)
        else:
            reference_index, gap = None, 0
        out, transforms = self.map_with_transforms(record)
        if out is None:
            return None
        if gap == 0:
            reference = np.ascontiguousarray(out["image"].numpy().transpose(1, 2, 0))
        else:
            path = record["video_frames"][reference_index]
            reference = transforms.apply_image(self._read_reference(
                path, record, f"reference frame {path!r} ({gap} frames before)"))
        out["reference_image"] = torch.as_tensor(np.ascontiguousarray(reference.transpose(2, 0, 1)))
        out["frame_gap"] = gap
        if gap == 0 and self.flow_source is None:
            return out
        flow = self._flow_of(reference_index, gap, record)
        if flow is not None:
            out["flow"] = torch.from_numpy(np.ascontiguousarray(transform_flow(transforms, flow).transpose(2, 0, 1)))
        return out

    def _map_flow_pair(self, record):
        """A FlyingChairs-type record: image (img1, target), reference_image (img2), flow."""
        out = copy.deepcopy(record)
        image = self._read_image(out)
        reference = self._read_reference(record["reference_file_name"], record, "reference image (img2)")
        flow = self._flow_of(None, 1, record)
        aug_input = InstanceAugInput(image, np.zeros((0, 4)), np.zeros(0, bool))
        transforms = self.augmentations(aug_input)
        out["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        out["reference_image"] = torch.as_tensor(
            np.ascontiguousarray(transforms.apply_image(reference).transpose(2, 0, 1)))
        out["flow"] = torch.from_numpy(np.ascontiguousarray(transform_flow(transforms, flow).transpose(2, 0, 1)))
        out["frame_gap"] = 1
        return out
