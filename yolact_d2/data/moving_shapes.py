"""A synthetic "moving shapes" video set: YouTube-VIS json, frames, and the exact optical flow of
every frame pair.

It is to YolactEdge what the shapes set (shapes.py) is to YOLACT: the video pipeline (frame-pair
mapper, flow pre-training, video fine-tuning, the 5-phase video evaluation) runs end to end on a
CPU in minutes, on data whose flow is known exactly because the generator knows the motion.

Layout written under ``root``::

    root/generation.json                       parameters it was generated with (idempotency check)
    root/annotations/instances_{train,val}.json  YouTube-VIS format
    root/{train,val}/JPEGImages/clip0001/00000.png ...
    root/{train,val}/motion/clip0001.json      the clip's motion record: what flows are rendered from

Each clip has a static background (a flat dark colour, smooth blotches and fixed per-pixel noise,
so a zero flow is visible as such) and 2-4 shapes of the shapes set's classes, each with its own
similarity motion (translation, rotation, scale; one that stays in the frame bounces off its borders) and a faint stripe texture that moves with
it (so rotation and motion inside a flat shape are visible). Shapes are painted in a fixed z-order
per clip, so later ones occlude earlier ones; some shapes leave the frame during the clip, some
enter it. Per-frame masks are of the VISIBLE part; an object absent, fully hidden or outside on a
frame (or with fewer than ``min_area`` visible pixels) is null there.

Coordinates: pixel (row i, column j) covers [j, j+1) x [i, i+1) (pycocotools' and Detectron2's
convention) and belongs to a shape exactly when its centre (j + 0.5, i + 0.5) is inside it.
Object k at frame t is its unit polygon P_k mapped by A_t(u) = s_t R(a_t) u + c_t, with
R(a) = [[cos a, -sin a], [sin a, cos a]] acting on column vectors (x, y). The flow from a target
frame t to a reference frame r (the project's convention: backward flow in pixels,
target(x, y) ~= reference(x + u, y + v)) at a pixel p of object k is A_r(A_t^-1(p)) - p: where
that point of the topmost object covering p was in the reference frame (also when it was hidden
or outside there); 0 on the background.
"""
import functools
import json
import logging
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util

from .datasets import category_metadata, register_dataset
from .shapes import (
    DEFAULT_KINDS,
    check_shape_params,
    checked_generation_params,
    datasets_root,
    random_colour,
    read_generation_params,
    rle_json,
    shape_categories,
    shape_polygon,
    write_atomically,
)
from .video import load_ytvis_json

__all__ = [
    "MovingShapesFlow",
    "generate_moving_shapes_dataset",
    "prepare_moving_shapes",
    "moving_shapes_default_root",
    "moving_shapes_flow_source",
    "read_motion",
    "render_object_ids",
    "render_flow",
    "write_clip_video",
]

logger = logging.getLogger(__name__)

# Bumped whenever the generator's output for the same parameters changes.
_GENERATOR_VERSION = 2  # 2: objects that stay bounce off the borders
_SPLITS = ("train", "val")
_FRAMES_DIR, _MOTION_DIR = "JPEGImages", "motion"  # JPEGImages: YouTube-VIS's folder name


def moving_shapes_default_root():
    """The moving-shapes set's default folder: datasets_root()/moving_shapes
    ($DETECTRON2_DATASETS/moving_shapes, else ~/.cache/yolact_d2/datasets/moving_shapes)."""
    return os.path.join(datasets_root(), "moving_shapes")


# ----------------------------------------------------------------------------- motion
def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _pixel_centres(h, w):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([xs + 0.5, ys + 0.5], -1)  # (h, w, 2) as (x, y)


def _to_unit(obj, t, points):
    """A_t^-1 of (..., 2) pixel points: the object's own unit coordinates."""
    return (points - np.asarray(obj["center"][t])) @ _rotation(obj["angle"][t]) / obj["scale"][t]


def _from_unit(obj, t, unit_points):
    """A_t of (..., 2) points in the object's unit coordinates: pixels at frame t."""
    return obj["scale"][t] * unit_points @ _rotation(obj["angle"][t]).T + np.asarray(obj["center"][t])


def _object_polygon(obj, t):
    """Vertices (K, 2) in pixels of object `obj` (a motion-record entry) at frame t."""
    return _from_unit(obj, t, np.asarray(obj["polygon"], dtype=np.float64))


def _sample_leaving_track(rng, size, num_frames, extent, scales, max_speed):
    """Centres (T, 2) of a straight track that starts inside the frame and is fully outside from a
    frame t_out on, or None when no such track within max_speed was drawn."""
    for _ in range(30):
        t_out = int(rng.integers(num_frames // 2, num_frames))
        margin = extent * scales[0]
        c0 = rng.uniform(margin, size - margin, size=2)
        d = _rotation(rng.uniform(0, 2 * np.pi)) @ np.array([1.0, 0.0])
        # Distance along d to each border line, and how far past it the centre must go for the
        # whole shape (radius extent * scale) to be out.
        with np.errstate(divide="ignore"):
            to_border = np.where(d > 0, (size - c0) / d, np.where(d < 0, -c0 / d, np.inf))
        axis = int(np.argmin(to_border))
        travel = to_border[axis] + (extent * scales[t_out] + 1.0) / abs(d[axis])
        speed = travel / t_out
        if speed <= max_speed:
            return c0 + np.arange(num_frames)[:, None] * (speed * d)
    return None


def _fold_into(x, lo, hi):
    """x reflected back into [lo, hi] at both ends, as often as needed (a triangle wave)."""
    period = 2 * (hi - lo)
    r = np.mod(x - lo, period)
    return lo + np.where(r > hi - lo, period - r, r)


def _sample_object(rng, p):
    """One object's kind, look and per-frame similarity parameters (a motion-record entry without
    ids)."""
    size, n = p["image_size"], p["num_frames"]
    kinds = p["kinds"]
    kind_idx = int(rng.integers(len(kinds)))
    aspect = rng.uniform(0.5, 0.8) if kinds[kind_idx] == "ellipse" else rng.uniform(0.6, 1.0)
    unit = shape_polygon(kinds[kind_idx], 0.0, 0.0, 1.0, 0.0, aspect)  # (K, 2), unit radius
    extent = float(np.linalg.norm(unit, axis=1).max())
    t = np.arange(n, dtype=np.float64)
    radius = rng.uniform(p["min_size"], p["max_size"]) * size / 2
    growth = rng.uniform(-1, 1) * np.log(p["max_scale_change"]) / max(n - 1, 1)
    scales = radius * np.exp(growth * (t - (n - 1) / 2))
    angles = rng.uniform(0, 2 * np.pi) + rng.uniform(-1, 1) * p["max_rotation"] * t

    role = rng.choice(["leave", "enter", "stay"], p=[p["leave_prob"], p["enter_prob"],
                                                     1 - p["leave_prob"] - p["enter_prob"]])
    centres = None
    if role != "stay":
        # "enter" is a leaving track played backwards (the scales too, so the extent still fits).
        forward_scales = scales if role == "leave" else scales[::-1]
        centres = _sample_leaving_track(rng, size, n, extent, forward_scales, p["max_speed"])
        if centres is not None and role == "enter":
            centres = centres[::-1]
    if centres is None:  # stays around: drifts with a slight curve, may touch the border
        lo, hi = radius * 0.6, size - radius * 0.6
        c0 = rng.uniform(lo, hi, size=2)
        v = _rotation(rng.uniform(0, 2 * np.pi)) @ np.array([rng.uniform(0, 0.6) * p["max_speed"], 0.0])
        a = rng.uniform(-1, 1, size=2) * p["max_speed"] / max(n, 1) / 2
        # Bounces off the box [lo, hi] (a fold keeps each frame's step): at high speeds an object
        # that only drifted would leave the frame too, and the frames would be mostly cut shapes.
        centres = _fold_into(c0 + t[:, None] * v + 0.5 * t[:, None] ** 2 * a, lo, hi)
    return dict(
        kind=kinds[kind_idx], category_id=kind_idx + 1, polygon=unit.tolist(),
        colour=[int(c) for c in random_colour(rng)],
        # Stripes in the object's own unit coordinates: value = 1 + amp * sin(2 pi f (u . dir) + phase).
        texture=dict(direction=(_rotation(rng.uniform(0, 2 * np.pi)) @ np.array([1.0, 0.0])).tolist(),
                     frequency=float(rng.uniform(0.8, 1.6)), phase=float(rng.uniform(0, 2 * np.pi)),
                     amplitude=p["object_texture"]),
        center=centres.tolist(), angle=angles.tolist(), scale=scales.tolist(),
    )


def _polygon_mask(poly, h, w):
    """(h, w) bool: the pixels whose centre lies inside polygon `poly` (K, 2).

    Why not pycocotools' rasteriser (shapes.py's): it approximates this test and differs from it on
    ~0.7% of the object pixels (along edges), so masks and the exact flow would disagree there."""
    from matplotlib.path import Path

    mask = np.zeros((h, w), bool)
    x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int), [w, h])
    if x0 >= x1 or y0 >= y1:  # wholly outside the frame
        return mask
    centres = _pixel_centres(h, w)[y0:y1, x0:x1]
    inside = Path(poly).contains_points(centres.reshape(-1, 2))
    mask[y0:y1, x0:x1] = inside.reshape(y1 - y0, x1 - x0)
    return mask


def _object_masks(motion, t):
    """(h, w) bool mask of each object's whole shape at frame t (before occlusion), in z-order."""
    h, w = motion["height"], motion["width"]
    return [_polygon_mask(_object_polygon(obj, t), h, w) for obj in motion["objects"]]


def render_object_ids(motion, t):
    """(h, w) int32 map of frame t: k + 1 where object k (z-order index) is the topmost, 0 on the
    background."""
    ids = np.zeros((motion["height"], motion["width"]), np.int32)
    for k, mask in enumerate(_object_masks(motion, t)):
        ids[mask] = k + 1
    return ids


def render_flow(motion, target, reference, ids=None):
    """The exact backward flow (h, w, 2) float32, in pixels, from frame `target` to frame
    `reference` of a clip's motion record: at a pixel of object k, A_r(A_t^-1(p)) - p; 0 on the
    background (static). `ids`: render_object_ids(motion, target) when already at hand."""
    n = motion["num_frames"]
    for name, t in (("target", target), ("reference", reference)):
        if not 0 <= t < n:
            raise IndexError(f"Moving-shapes clip {motion['video']!r}: {name} frame {t} is not in "
                             f"0..{n - 1}.")
    h, w = motion["height"], motion["width"]
    flow = np.zeros((h, w, 2), np.float64)
    if target == reference:  # exactly 0, without the round-off of A_t(A_t^-1(p)) - p
        return flow.astype(np.float32)
    ids = render_object_ids(motion, target) if ids is None else ids
    centres = _pixel_centres(h, w)
    for k, obj in enumerate(motion["objects"]):
        sel = ids == k + 1
        if not sel.any():
            continue
        p = centres[sel]
        u = _to_unit(obj, target, p)
        q = _from_unit(obj, reference, u)
        flow[sel] = q - p
    return flow.astype(np.float32)


def _render_frame(motion, background, t, ids):
    """(h, w, 3) uint8 BGR frame t, from its object-id map `ids` (render_object_ids)."""
    image = background.copy()
    centres = _pixel_centres(motion["height"], motion["width"])
    for k, obj in enumerate(motion["objects"]):
        sel = ids == k + 1
        if not sel.any():
            continue
        tex = obj["texture"]
        u = _to_unit(obj, t, centres[sel])
        shade = 1 + tex["amplitude"] * np.sin(2 * np.pi * tex["frequency"] * (u @ np.asarray(tex["direction"]))
                                              + tex["phase"])
        image[sel] = np.asarray(obj["colour"], np.float64) * shade[:, None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _background(rng, size, p):
    """A static (h, w, 3) float BGR background: flat dark colour + smooth blotches + fixed noise."""
    base = rng.integers(10, 70, size=3).astype(np.float64)
    blotches = cv2.resize(rng.normal(0, 1, size=(6, 6, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, p["background_noise"], size=(size, size, 3))
    return base + p["background_texture"] * blotches + noise


def _make_clip(rng, p, video, video_id):
    """(motion record, list of frames, list of id maps) of one clip. Objects never visible on any
    frame (min_area pixels) are dropped, so every track has at least one annotated frame."""
    size, n = p["image_size"], p["num_frames"]
    background = _background(rng, size, p)
    while True:
        num_objects = int(rng.integers(p["min_objects"], p["max_objects"] + 1))
        objects = [_sample_object(rng, p) for _ in range(num_objects)]
        while objects:
            motion = dict(video=video, video_id=video_id, height=size, width=size, num_frames=n,
                          objects=objects)
            id_maps = [render_object_ids(motion, t) for t in range(n)]
            seen = [max(int((ids == k + 1).sum()) for ids in id_maps) >= p["min_area"]
                    for k in range(len(objects))]
            if all(seen):
                frames = [_render_frame(motion, background, t, ids) for t, ids in enumerate(id_maps)]
                return motion, frames, id_maps
            objects = [obj for obj, s in zip(objects, seen) if s]


# ----------------------------------------------------------------------------- dataset
def _params(num_train_clips, num_val_clips, num_frames, image_size, seed, kinds, min_objects,
            max_objects, min_size, max_size, max_speed, max_rotation, max_scale_change, leave_prob,
            enter_prob, min_area, object_texture, background_texture, background_noise, image_ext):
    """The checked generation parameters (also the idempotency record, generation.json)."""
    check_shape_params(kinds, min_objects, max_objects, min_size, max_size, image_size, image_ext)
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 (a clip needs frame pairs), got {num_frames}.")
    if not (leave_prob >= 0 and enter_prob >= 0 and leave_prob + enter_prob <= 1):
        raise ValueError(f"leave_prob and enter_prob must be >= 0 with a sum <= 1, got {leave_prob}, "
                         f"{enter_prob}.")
    if max_speed <= 0 or max_scale_change < 1 or max_rotation < 0:
        raise ValueError(f"Need max_speed > 0 (pixels a frame), max_scale_change >= 1 and "
                         f"max_rotation >= 0 (radians a frame), got {max_speed}, {max_scale_change}, "
                         f"{max_rotation}.")
    if num_train_clips < 0 or num_val_clips < 0:
        raise ValueError(f"Clip counts must be >= 0, got {num_train_clips}, {num_val_clips}.")
    return dict(
        generator_version=_GENERATOR_VERSION, num_train_clips=int(num_train_clips),
        num_val_clips=int(num_val_clips), num_frames=int(num_frames), image_size=int(image_size),
        seed=int(seed), kinds=list(kinds), min_objects=int(min_objects), max_objects=int(max_objects),
        min_size=float(min_size), max_size=float(max_size), max_speed=float(max_speed),
        max_rotation=float(max_rotation), max_scale_change=float(max_scale_change),
        leave_prob=float(leave_prob), enter_prob=float(enter_prob), min_area=int(min_area),
        object_texture=float(object_texture), background_texture=float(background_texture),
        background_noise=float(background_noise), image_ext=image_ext,
    )


def _track_annotation(motion, k, id_maps, min_area):
    """The YouTube-VIS annotation (without ids) of object k: its visible mask on every frame."""
    segmentations, bboxes, areas = [], [], []
    for ids in id_maps:
        visible = (ids == k + 1).astype(np.uint8)
        area = int(visible.sum())
        if area < min_area:
            segmentations.append(None)
            bboxes.append(None)
            areas.append(None)
            continue
        segmentations.append(rle_json(visible))
        bboxes.append([round(float(v), 2) for v in mask_util.toBbox(mask_util.encode(np.asfortranarray(visible)))])
        areas.append(float(area))
    return dict(category_id=motion["objects"][k]["category_id"], iscrowd=0, segmentations=segmentations,
                bboxes=bboxes, areas=areas, height=motion["height"], width=motion["width"],
                length=motion["num_frames"])


def _write_split(out_dir, split, split_idx, count, p):
    frames_root = os.path.join(out_dir, split, _FRAMES_DIR)
    motion_root = os.path.join(out_dir, split, _MOTION_DIR)
    os.makedirs(frames_root)
    os.makedirs(motion_root)
    videos, annotations = [], []
    for i in range(count):
        # One generator per (seed, split, clip): clips do not depend on counts or order.
        rng = np.random.default_rng([p["seed"], split_idx, i])
        video_id, video = i + 1, f"clip{i + 1:04d}"
        motion, frames, id_maps = _make_clip(rng, p, video, video_id)
        os.makedirs(os.path.join(frames_root, video))
        file_names = []
        for t, frame in enumerate(frames):
            name = f"{video}/{t:05d}.{p['image_ext']}"
            if not cv2.imwrite(os.path.join(frames_root, name), frame):
                raise OSError(f"Could not write frame {os.path.join(frames_root, name)}")
            file_names.append(name)
        for k, obj in enumerate(motion["objects"]):
            ann = _track_annotation(motion, k, id_maps, p["min_area"])
            ann.update(id=len(annotations) + 1, video_id=video_id)
            obj["annotation_id"] = ann["id"]  # the record's track_id
            obj["z_order"] = k
            annotations.append(ann)
        with open(os.path.join(motion_root, f"{video}.json"), "w") as f:
            json.dump(motion, f)
        size = p["image_size"]
        videos.append(dict(id=video_id, file_names=file_names, height=size, width=size, length=len(frames)))
    ytvis = dict(
        info=dict(description=f"yolact_d2 synthetic moving shapes ({split})", version=str(_GENERATOR_VERSION)),
        videos=videos, annotations=annotations, categories=shape_categories(p["kinds"]),
    )
    with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(ytvis, f)


def _write_dataset(out_dir, p, counts):
    os.makedirs(os.path.join(out_dir, "annotations"))
    for split_idx, (split, count) in enumerate(zip(_SPLITS, counts)):
        _write_split(out_dir, split, split_idx, count, p)


def _split_paths(root, split):
    return (os.path.join(root, "annotations", f"instances_{split}.json"),
            os.path.join(root, split, _FRAMES_DIR), os.path.join(root, split, _MOTION_DIR))


def generate_moving_shapes_dataset(root, num_train_clips=80, num_val_clips=10, num_frames=20,
                                   image_size=128, seed=0, *, kinds=DEFAULT_KINDS, min_objects=2,
                                   max_objects=4, min_size=0.2, max_size=0.45, max_speed=3.0,
                                   max_rotation=0.06, max_scale_change=1.5, leave_prob=0.2,
                                   enter_prob=0.15, min_area=10, object_texture=0.06,
                                   background_texture=8.0, background_noise=6.0, image_ext="png"):
    """Write the synthetic moving-shapes video set under `root` (see the module doc for the layout).

    Args:
        num_train_clips, num_val_clips: clips per split; num_frames: frames a clip.
        image_size: side of the square frames, in pixels (the shapes set's 128 by default).
        seed: everything is a pure function of the parameters and this seed.
        kinds: shape kinds, one class each (category ids 1..len(kinds) in this order).
        min_objects, max_objects: objects per clip (uniform, inclusive), before dropping those
            never visible.
        min_size, max_size: object extent at mid-clip as a fraction of the image side.
        max_speed: pixels a frame; max_rotation: radians a frame; max_scale_change: the largest
            ratio of an object's scale between the first and the last frame.
        leave_prob, enter_prob: share of objects that leave / enter the frame during the clip.
        min_area: fewer visible pixels than this on a frame and the object is null there.
        object_texture: stripe contrast on objects (0: flat colour, as the shapes set). Measured
            with the main job's image model on 10 val clips: segm AP 54.3 flat, 52.8 at 0.06, 49.0
            at 0.12 (the stripes are new to it; a little makes rotation and inner motion visible).
        background_texture, background_noise: static blotch amplitude and noise sigma (grey levels).
        image_ext: "png" (lossless; default: JPEG's ringing at the sharp edges changes from frame
            to frame and breaks brightness constancy along moving edges) or "jpg".

    Idempotent: when `root` already holds a set generated with the same parameters it is left
    alone. Atomic (shapes.write_atomically): written into a temporary sibling folder and renamed
    into place; temporary folders of writers that died are removed.

    Returns: dict split -> (json_file, image_root, motion_root).
    """
    p = _params(num_train_clips, num_val_clips, num_frames, image_size, seed, kinds, min_objects,
                max_objects, min_size, max_size, max_speed, max_rotation, max_scale_change, leave_prob,
                enter_prob, min_area, object_texture, background_texture, background_noise, image_ext)
    root = os.path.abspath(root)
    result = {s: _split_paths(root, s) for s in _SPLITS}
    if read_generation_params(root) == p:
        logger.info("Moving-shapes set already at %s with the same parameters; not regenerating.", root)
        return result
    write_atomically(root, p, functools.partial(_write_dataset, p=p, counts=(num_train_clips, num_val_clips)))
    logger.info("Wrote moving-shapes set (%d train / %d val clips of %d frames) to %s",
                num_train_clips, num_val_clips, num_frames, root)
    return result


# ----------------------------------------------------------------------------- flow source
@functools.lru_cache(maxsize=64)
def _read_motion_cached(path, mtime_ns):
    with open(path) as f:
        return json.load(f)


def read_motion(path):
    """A clip's motion record (the json generate_moving_shapes_dataset writes), cached per process
    (a data worker reads each clip's record once); an error names a missing file."""
    path = os.path.abspath(os.fspath(path))
    try:
        mtime = os.stat(path).st_mtime_ns
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Moving-shapes motion record {path!r} does not exist: the dataset is "
                                "not a generated moving-shapes set, or it was moved without its "
                                f"'{_MOTION_DIR}/' folder. Regenerate it (prepare_moving_shapes).") from e
    return _read_motion_cached(path, mtime)


class MovingShapesFlow:
    """The exact flow source of the moving-shapes set for VideoPairMapper: called with the
    reference and the target frame of a pair, returns the backward flow (H, W, 2) float32 in pixels
    of the original frames (target(x, y) ~= reference(x + u, y + v)), rendered from the clip's
    motion record.

    `reference`: an index into the target's `video_frames` (what VideoPairMapper passes; the
    records of this set list every frame of the clip there, so it is the frame number), a frame
    path or a record (its `frame_idx`); `target`: a record of the moving-shapes YouTube-VIS json
    (`file_name`, `frame_idx`). `motion_root`: the split's motion folder; default: found from the frame path
    (<split>/JPEGImages/<clip>/<frame> -> <split>/motion/<clip>.json). Picklable (data workers)."""

    def __init__(self, motion_root=None):
        self.motion_root = os.path.abspath(os.fspath(motion_root)) if motion_root else None

    def __eq__(self, other):
        return isinstance(other, MovingShapesFlow) and other.motion_root == self.motion_root

    def __hash__(self):
        return hash(self.motion_root)

    def __repr__(self):
        return f"MovingShapesFlow(motion_root={self.motion_root!r})"

    def motion_file(self, target):
        frames_dir = os.path.dirname(os.path.abspath(target["file_name"]))
        clip = os.path.basename(frames_dir)
        split_dir = os.path.dirname(os.path.dirname(frames_dir))
        motion_root = self.motion_root or os.path.join(split_dir, _MOTION_DIR)
        return os.path.join(motion_root, f"{clip}.json")

    @staticmethod
    def _frame_index(reference, target):
        if isinstance(reference, dict):
            if reference.get("video_id", target.get("video_id")) != target.get("video_id"):
                raise ValueError(f"Moving-shapes flow: the reference {reference.get('file_name')!r} (video "
                                 f"{reference.get('video_id')}) and the target {target.get('file_name')!r} "
                                 f"(video {target.get('video_id')}) are not frames of the same clip.")
            return int(reference["frame_idx"])
        if isinstance(reference, (int, np.integer)):
            return int(reference)
        frames = [os.path.abspath(f) for f in target.get("video_frames", [])]
        path = os.path.abspath(os.fspath(reference))
        if path not in frames:
            raise ValueError(f"Moving-shapes flow: reference frame {path!r} is not a frame of the "
                             f"target's clip ({os.path.dirname(os.path.abspath(target['file_name']))!r}).")
        return frames.index(path)

    def __call__(self, reference, target):
        motion = read_motion(self.motion_file(target))
        hw = (motion["height"], motion["width"])
        if (target.get("height", hw[0]), target.get("width", hw[1])) != hw:
            raise ValueError(f"Moving-shapes flow: {target['file_name']!r} is {target.get('height')}x"
                             f"{target.get('width')} in its record but {hw[0]}x{hw[1]} in its motion "
                             f"record {self.motion_file(target)!r}; regenerate the set.")
        frames = target.get("video_frames")
        if frames is not None and len(frames) != motion["num_frames"]:
            raise ValueError(f"Moving-shapes flow: the record of {target['file_name']!r} lists {len(frames)} "
                             f"video_frames but its clip has {motion['num_frames']} frames; frame indices "
                             "would not match the motion record (register the set with prepare_moving_shapes).")
        return render_flow(motion, int(target["frame_idx"]), self._frame_index(reference, target))


def moving_shapes_flow_source(dataset_name):
    """The MovingShapesFlow of a registered moving-shapes dataset (prepare_moving_shapes), for a
    config's VideoPairMapper(flow_source=...). A list of names: one source that finds each clip's
    record from its frame path. An error names a dataset that is not a moving-shapes set."""
    from detectron2.data import MetadataCatalog

    names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name)
    roots = []
    for name in names:
        root = MetadataCatalog.get(name).get("motion_root", None)
        if root is None:
            raise KeyError(f"Dataset {name!r} has no exact flow: it is not a moving-shapes set "
                           "registered by prepare_moving_shapes (its metadata has no 'motion_root').")
        roots.append(root)
    return MovingShapesFlow(roots[0] if len(roots) == 1 else None)


# ----------------------------------------------------------------------------- registration
def _generate_and_load(root, split, name, generate_kwargs):
    json_file, image_root, _ = generate_moving_shapes_dataset(root, **generate_kwargs)[split]
    return load_ytvis_json(json_file, image_root, name)


def prepare_moving_shapes(root=None, prefix="moving_shapes", **generate_kwargs):
    """Register "<prefix>_train" / "<prefix>_val" (YouTube-VIS records, as register_ytvis_instances
    gives them) for the moving-shapes set generated at `root` (default:
    moving_shapes_default_root()) with these generate_moving_shapes_dataset parameters. Nothing is
    written now: a split is generated (idempotently, atomically) when it is first read through
    DatasetCatalog. Class names are in the metadata at once, and `motion_root` (for
    moving_shapes_flow_source); bad parameters raise now. Returns the names."""
    root = os.path.abspath(root or moving_shapes_default_root())
    params = checked_generation_params(generate_moving_shapes_dataset, _params, root, generate_kwargs)
    categories = category_metadata(shape_categories(params["kinds"]), root)
    names = []
    for split in _SPLITS:
        name = f"{prefix}_{split}"
        json_file, image_root, motion_root = _split_paths(root, split)
        metadata = dict(json_file=json_file, image_root=image_root, evaluator_type="ytvis",
                        motion_root=motion_root, moving_shapes_generation=params, **categories)
        names.append(register_dataset(
            name, functools.partial(_generate_and_load, root, split, name, dict(generate_kwargs)), metadata))
    return names


# ----------------------------------------------------------------------------- demo video
def write_clip_video(dataset_root_or_name, video_index, path, split="val", fps=10):
    """Write clip `video_index` (0-based, json order) of a moving-shapes split as an .mp4 (OpenCV
    'mp4v'), e.g. for `tools/demo.py --video-input`. `dataset_root_or_name`: a registered dataset
    name (generated now if needed; `split` is then ignored) or the root of a generated set.
    Returns `path`."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if dataset_root_or_name in DatasetCatalog.list():
        DatasetCatalog.get(dataset_root_or_name)  # generates the set on first read
        meta = MetadataCatalog.get(dataset_root_or_name)
        json_file, image_root = meta.json_file, meta.image_root
    else:
        json_file, image_root, _ = _split_paths(os.path.abspath(dataset_root_or_name), split)
        if not os.path.isfile(json_file):
            raise FileNotFoundError(f"{dataset_root_or_name!r} is neither a registered dataset nor the root "
                                    f"of a generated moving-shapes set (no {json_file!r}); generate it "
                                    "with generate_moving_shapes_dataset(root) first.")
    with open(json_file) as f:
        videos = json.load(f)["videos"]
    if not 0 <= video_index < len(videos):
        raise IndexError(f"{json_file!r} has {len(videos)} clips; video_index {video_index} is not in "
                         f"0..{len(videos) - 1}.")
    video = videos[video_index]
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                             (video["width"], video["height"]))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write the video {os.fspath(path)!r} (codec 'mp4v').")
    try:
        for name in video["file_names"]:
            frame = cv2.imread(os.path.join(image_root, name))
            if frame is None:
                raise OSError(f"Cannot read frame {os.path.join(image_root, name)!r}.")
            writer.write(frame)
    finally:
        writer.release()
    return path


def main(argv=None):
    """python -m yolact_d2.data.moving_shapes --write-video clip.mp4: write one clip of the set at
    --root as a video, for the README's demo (a missing set is generated with the defaults)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--root", default=None, help="default: moving_shapes_default_root()")
    parser.add_argument("--split", default="val", choices=_SPLITS)
    parser.add_argument("--video-index", type=int, default=0)
    parser.add_argument("--write-video", required=True, metavar="PATH")
    args = parser.parse_args(argv)
    root = args.root or moving_shapes_default_root()
    try:
        if read_generation_params(root) is None:  # a set already there (e.g. a config's) is used as is
            generate_moving_shapes_dataset(root)
        print(write_clip_video(root, args.video_index, args.write_video, split=args.split))
    except (IndexError, OSError) as e:  # one line naming the problem, not a traceback
        raise SystemExit(f"moving_shapes: {e}") from None


if __name__ == "__main__":
    main()
