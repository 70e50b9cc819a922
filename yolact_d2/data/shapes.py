"""A synthetic "shapes" instance-segmentation dataset, written to disk as COCO json + images.

It exists so the whole pipeline (Detectron2's COCO loader, our mapper and augmentations, training,
COCOEvaluator) can be exercised end to end on a CPU in minutes, exactly as it runs on COCO.

Layout written under ``root``::

    root/generation.json                 parameters it was generated with (idempotency check)
    root/annotations/instances_train.json
    root/annotations/instances_val.json
    root/train/000001.png ...
    root/val/000001.png ...

Every image has a flat, slightly noisy dark background and a few filled shapes of random colour,
size and rotation; later shapes may occlude earlier ones (each keeps >= ``min_visible`` of its
area). The class is the shape kind, independent of its colour. Annotations: unoccluded shapes
as polygons, occluded shapes (and a random share of the rest) as compressed RLE, so both
segmentation paths run; some train images also carry one ``iscrowd=1`` cluster of tiny shapes.
The image pixels are painted from the very rasterisation pycocotools uses for the annotations,
so ground truth and pixels agree exactly.
"""
import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import socket
import uuid

import cv2
import numpy as np
import pycocotools.mask as mask_util

from .datasets import category_metadata, load_coco_json_checked, register_coco_dataset, register_dataset

__all__ = [
    "DEFAULT_KINDS",
    "ALL_KINDS",
    "generate_shapes_dataset",
    "register_shapes",
    "prepare_shapes",
    "shapes_default_root",
    "datasets_root",
    # drawing and writing helpers, shared with the moving-shapes video set (moving_shapes.py)
    "shape_polygon",
    "rle_json",
    "random_colour",
    "shape_categories",
    "fresh_dir",
    "read_generation_params",
    "write_atomically",
    "checked_generation_params",
    "check_shape_params",
]

logger = logging.getLogger(__name__)

ALL_KINDS = ("circle", "rectangle", "triangle", "star", "ellipse", "hexagon")
DEFAULT_KINDS = ("circle", "rectangle", "triangle", "star")
# Bumped whenever the generator's output for the same parameters changes.
_GENERATOR_VERSION = 1
_SPLITS = ("train", "val")


def datasets_root():
    """Where generated datasets go: $DETECTRON2_DATASETS when set (Detectron2's convention), else a
    per-user cache folder ($XDG_CACHE_HOME/yolact_d2/datasets, default ~/.cache/yolact_d2/datasets).

    Why not Detectron2's default ./datasets: that depends on where a command runs, so inference
    from another folder would generate (and train on) a second copy there."""
    env = os.environ.get("DETECTRON2_DATASETS")
    if env:
        return os.path.abspath(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(cache), "yolact_d2", "datasets")


def shapes_default_root():
    """The shapes set's default folder: datasets_root()/shapes."""
    return os.path.join(datasets_root(), "shapes")


# ----------------------------------------------------------------------------- geometry
def shape_polygon(kind, cx, cy, radius, angle, aspect):
    """Vertices (K, 2) float of a shape centred at (cx, cy) whose extent is about 2*radius."""
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
    elif kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([np.cos(t) * radius, np.sin(t) * radius * aspect], 1)
    elif kind == "rectangle":
        hw, hh = radius * 0.85, radius * 0.85 * aspect
        pts = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]], dtype=np.float64)
    elif kind == "triangle":
        t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
    elif kind == "hexagon":
        t = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
    elif kind == "star":
        t = np.linspace(-np.pi / 2, 3 * np.pi / 2, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
    else:
        raise ValueError(f"Unknown shape kind {kind!r}; choose from {ALL_KINDS}.")
    if kind not in ("circle",):
        c, s = np.cos(angle), np.sin(angle)
        pts = pts @ np.array([[c, s], [-s, c]])
    return pts + np.array([cx, cy])


def _rasterize(poly_flat, h, w):
    """(h, w) uint8 mask of one polygon, rasterised by pycocotools like the COCO loader does."""
    rle = mask_util.frPyObjects([poly_flat], h, w)
    return mask_util.decode(mask_util.merge(rle))


def rle_json(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def random_colour(rng):
    """A saturated, bright BGR colour (objects), well apart from the dark background."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(150, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.int32)


# ----------------------------------------------------------------------------- one image
def _make_image(rng, size, kinds, min_objects, max_objects, min_size, max_size, min_visible,
                rle_fraction, crowd_prob):
    """Returns (image (size,size,3) uint8 BGR, list of annotation dicts without ids)."""
    h = w = size
    bg = rng.integers(10, 70, size=3)
    image = np.clip(bg + rng.normal(0, 6, size=(h, w, 3)), 0, 255)

    objects = []  # each: dict(kind_idx, poly (flat list) or None, full mask, colour, crowd)
    if crowd_prob > 0 and rng.random() < crowd_prob:
        # A crowd region: a tight cluster of tiny shapes of one kind, annotated as one iscrowd RLE.
        kind_idx = int(rng.integers(len(kinds)))
        ccx, ccy = rng.uniform(0.2, 0.8, size=2) * size
        union = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(4, 8))):
            r = rng.uniform(0.02, 0.035) * size
            px, py = ccx + rng.normal(0, 0.06 * size), ccy + rng.normal(0, 0.06 * size)
            poly = shape_polygon(kinds[kind_idx], px, py, r, rng.uniform(0, 2 * np.pi), 1.0)
            union |= _rasterize(poly.ravel().tolist(), h, w)
        if union.any():
            objects.append(dict(kind_idx=kind_idx, poly=None, mask=union,
                                colour=random_colour(rng), crowd=True))

    num_objects = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(num_objects):
        for _attempt in range(20):
            kind_idx = int(rng.integers(len(kinds)))
            radius = rng.uniform(min_size, max_size) * size / 2
            cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
            aspect = rng.uniform(0.5, 0.8) if kinds[kind_idx] == "ellipse" else rng.uniform(0.6, 1.0)
            poly = shape_polygon(kinds[kind_idx], cx, cy, radius, rng.uniform(0, 2 * np.pi), aspect)
            poly_flat = [round(float(v), 2) for v in poly.ravel()]
            mask = _rasterize(poly_flat, h, w)
            if mask.sum() < 16:
                continue
            # Reject placements that would hide too much of an earlier shape.
            ok = True
            for obj in objects:
                visible = obj["mask"] & (1 - _occluders(objects, obj)) & (1 - mask)
                if visible.sum() < min_visible * obj["mask"].sum():
                    ok = False
                    break
            if ok:
                objects.append(dict(kind_idx=kind_idx, poly=poly_flat, mask=mask,
                                    colour=random_colour(rng), crowd=False))
                break

    annotations = []
    for i, obj in enumerate(objects):
        image[obj["mask"].astype(bool)] = obj["colour"]
        visible = obj["mask"] & (1 - _occluders(objects, obj))
        occluded = visible.sum() < obj["mask"].sum()
        if visible.sum() == 0:
            continue
        if obj["crowd"] or occluded or rng.random() < rle_fraction:
            segmentation = rle_json(visible)
        else:
            segmentation = [obj["poly"]]
        bbox = mask_util.toBbox(mask_util.encode(np.asfortranarray(visible))).tolist()
        annotations.append(dict(
            category_id=obj["kind_idx"] + 1,
            bbox=[round(float(v), 2) for v in bbox],
            area=float(visible.sum()),
            iscrowd=int(obj["crowd"]),
            segmentation=segmentation,
        ))
    return np.clip(image, 0, 255).astype(np.uint8), annotations


def _occluders(objects, obj):
    """Union (h, w) uint8 of the masks painted after `obj` (they occlude it)."""
    idx = next(i for i, o in enumerate(objects) if o is obj)
    out = np.zeros_like(obj["mask"])
    for later in objects[idx + 1:]:
        out |= later["mask"]
    return out


# ----------------------------------------------------------------------------- dataset
def check_shape_params(kinds, min_objects, max_objects, min_size, max_size, image_size, image_ext):
    """Raise ValueError naming a bad parameter of the objects and images of a generated set."""
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        raise ValueError(f"Unknown shape kinds {bad} (choose from {ALL_KINDS}).")
    if not (1 <= min_objects <= max_objects):
        raise ValueError(f"Need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}.")
    if not (0 < min_size <= max_size <= 1):
        raise ValueError(f"Need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}.")
    if image_ext not in ("png", "jpg"):
        raise ValueError(f"image_ext must be 'png' or 'jpg', got {image_ext!r}.")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}.")


def _params(num_train, num_val, image_size, seed, kinds, min_objects, max_objects, min_size,
            max_size, min_visible, rle_fraction, crowd_prob, image_ext):
    """The checked generation parameters (also the idempotency record, generation.json)."""
    check_shape_params(kinds, min_objects, max_objects, min_size, max_size, image_size, image_ext)
    return dict(
        generator_version=_GENERATOR_VERSION, num_train=int(num_train), num_val=int(num_val),
        image_size=int(image_size), seed=int(seed), kinds=list(kinds),
        min_objects=int(min_objects), max_objects=int(max_objects), min_size=float(min_size),
        max_size=float(max_size), min_visible=float(min_visible),
        rle_fraction=float(rle_fraction), crowd_prob=float(crowd_prob), image_ext=image_ext,
    )


def shape_categories(kinds):
    """COCO categories of the shape kinds: ids 1..len(kinds) in order."""
    return [dict(id=k + 1, name=name, supercategory="shape") for k, name in enumerate(kinds)]


def read_generation_params(root):
    """The parameters a generated dataset at `root` was made with (its generation.json), or None."""
    try:
        with open(os.path.join(root, "generation.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_split(out_dir, split, split_idx, count, p):
    kinds = p["kinds"]
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir)
    images, annotations = [], []
    ann_id = 1
    for i in range(count):
        # One generator per (seed, split, image): images do not depend on counts or order.
        rng = np.random.default_rng([p["seed"], split_idx, i])
        image, anns = _make_image(
            rng, p["image_size"], kinds, p["min_objects"], p["max_objects"], p["min_size"],
            p["max_size"], p["min_visible"], p["rle_fraction"],
            p["crowd_prob"] if split == "train" else 0.0,
        )
        image_id = i + 1
        file_name = f"{image_id:06d}.{p['image_ext']}"
        if not cv2.imwrite(os.path.join(image_dir, file_name), image):
            raise OSError(f"Could not write image {os.path.join(image_dir, file_name)}")
        images.append(dict(id=image_id, file_name=file_name, height=image.shape[0],
                           width=image.shape[1]))
        for ann in anns:
            ann.update(id=ann_id, image_id=image_id)
            annotations.append(ann)
            ann_id += 1
    coco = dict(
        info=dict(description=f"yolact_d2 synthetic shapes ({split})", version=str(_GENERATOR_VERSION)),
        images=images,
        annotations=annotations,
        categories=shape_categories(kinds),
    )
    with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(coco, f)


def fresh_dir(parent, prefix):
    """A new, uniquely named folder with ordinary permissions (0777 minus umask, as os.makedirs).

    Why not tempfile.mkdtemp: it creates 0700, and the folder is renamed into place as the
    dataset, which other users (or a container running as another uid) could then not read."""
    path = os.path.join(parent, prefix + uuid.uuid4().hex[:12])
    os.mkdir(path)
    return path


def _remove_dead_writers_dirs(parent, base):
    """Remove the temporary folders of `base` that writers on this host left when they died
    (killed: their clean-up never ran). Those of live writers (generating now) stay."""
    host = socket.gethostname()
    for entry in os.listdir(parent):
        for prefix in (f".{base}.tmp-", f".{base}.old-"):
            parts = entry[len(prefix):].rsplit("-", 2) if entry.startswith(prefix) else []  # host, pid, random
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue
            try:
                os.kill(int(parts[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            except PermissionError:  # alive, another user's
                pass


def write_atomically(root, params, write):
    """Generate a dataset at `root` atomically: write(folder) fills a fresh temporary sibling
    folder, generation.json (= params) is written last, and the folder is renamed to `root` (a
    dataset already there is moved aside first, removed after). A failure removes the temporary
    folder; a killed writer's is removed by the next writer (folder names carry host and pid). When
    another process completes the same parameters meanwhile, its dataset is kept."""
    parent, base = os.path.dirname(root), os.path.basename(root)
    os.makedirs(parent, exist_ok=True)
    _remove_dead_writers_dirs(parent, base)
    tag = f"{socket.gethostname()}-{os.getpid()}-"
    tmp = fresh_dir(parent, f".{base}.tmp-{tag}")
    try:
        write(tmp)
        # Written last: its presence (inside the renamed folder) marks a complete dataset.
        with open(os.path.join(tmp, "generation.json"), "w") as f:
            json.dump(params, f, indent=1, sort_keys=True)
        old = None
        if os.path.lexists(root):
            if read_generation_params(root) == params:  # another process finished the same job meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = fresh_dir(parent, f".{base}.old-{tag}")
            os.rename(root, os.path.join(old, "data"))
        try:
            os.rename(tmp, root)
        except OSError:
            if read_generation_params(root) != params:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_dataset(out_dir, p, counts):
    os.makedirs(os.path.join(out_dir, "annotations"))
    for split_idx, (split, count) in enumerate(zip(_SPLITS, counts)):
        _write_split(out_dir, split, split_idx, count, p)


def generate_shapes_dataset(root, num_train=1000, num_val=100, image_size=128, seed=0, *,
                            kinds=DEFAULT_KINDS, min_objects=1, max_objects=4, min_size=0.2,
                            max_size=0.5, min_visible=0.5, rle_fraction=0.25, crowd_prob=0.05,
                            image_ext="png"):
    """Write the synthetic shapes dataset under `root` (see the module doc for the layout).

    Args:
        num_train, num_val: number of images per split.
        image_size: side of the square images, in pixels.
        seed: everything is a pure function of the parameters and this seed.
        kinds: shape kinds, one class each (category ids 1..len(kinds) in this order).
        min_objects, max_objects: objects per image (uniform, inclusive).
        min_size, max_size: object extent as a fraction of the image side.
        min_visible: an occluded shape keeps at least this share of its area visible.
        rle_fraction: share of unoccluded shapes annotated as RLE instead of a polygon.
        crowd_prob: chance that a train image carries one iscrowd cluster (val never has one).
        image_ext: "png" (lossless) or "jpg".

    Idempotent: when `root` already holds a dataset generated with the same parameters it is
    left alone. Atomic (write_atomically): the dataset is written to a temporary sibling folder and
    renamed into place, so an interrupted run never leaves a partial dataset at `root`.

    Returns: dict split -> (json_file, image_root).
    """
    p = _params(num_train, num_val, image_size, seed, kinds, min_objects, max_objects, min_size,
                max_size, min_visible, rle_fraction, crowd_prob, image_ext)
    root = os.path.abspath(root)
    result = {s: (os.path.join(root, "annotations", f"instances_{s}.json"), os.path.join(root, s))
              for s in _SPLITS}
    if read_generation_params(root) == p:
        logger.info("Shapes dataset already at %s with the same parameters; not regenerating.", root)
        return result

    write_atomically(root, p, functools.partial(_write_dataset, p=p, counts=(num_train, num_val)))
    logger.info("Wrote shapes dataset (%d train / %d val images) to %s", num_train, num_val, root)
    return result


def register_shapes(root=None, splits=_SPLITS, prefix="shapes"):
    """Register "<prefix>_train"/"<prefix>_val" for a shapes set already generated at `root`
    (default: shapes_default_root()) with register_coco_dataset: class names now, the json checked
    when loaded. Re-registering the same paths is a no-op; other paths replace the registration."""
    root = os.path.abspath(root or shapes_default_root())
    return [register_coco_dataset(f"{prefix}_{split}", os.path.join(root, "annotations", f"instances_{split}.json"),
                                  os.path.join(root, split))
            for split in splits]


def _generate_and_load(root, split, name, generate_kwargs):
    json_file, image_root = generate_shapes_dataset(root, **generate_kwargs)[split]
    return load_coco_json_checked(json_file, image_root, name)


def checked_generation_params(generate, check, root, generate_kwargs):
    """The parameters generate(root, **generate_kwargs) would record (its defaults filled in),
    through `check` (which raises on bad ones): so a lazy registration fails now, writing nothing."""
    bound = inspect.signature(generate).bind(root, **generate_kwargs)
    bound.apply_defaults()
    return check(**{k: v for k, v in bound.arguments.items() if k != "root"})


def prepare_shapes(root=None, prefix="shapes", **generate_kwargs):
    """Register "<prefix>_train" / "<prefix>_val" for the shapes set generated at `root` (default:
    shapes_default_root()) with these generate_shapes_dataset parameters. Nothing is written now:
    a split is generated (idempotently, atomically) when it is first read through DatasetCatalog.
    Class names are in the metadata at once; bad parameters raise now. Returns the names."""
    root = os.path.abspath(root or shapes_default_root())
    params = checked_generation_params(generate_shapes_dataset, _params, root, generate_kwargs)
    categories = category_metadata(shape_categories(params["kinds"]), root)
    names = []
    for split in _SPLITS:
        name = f"{prefix}_{split}"
        metadata = dict(json_file=os.path.join(root, "annotations", f"instances_{split}.json"),
                        image_root=os.path.join(root, split), evaluator_type="coco",
                        shapes_generation=params, **categories)
        names.append(register_dataset(
            name, functools.partial(_generate_and_load, root, split, name, dict(generate_kwargs)), metadata))
    return names


def dataset_fingerprint(root):
    """sha256 over every file under `root` (sorted): used by tests to check determinism."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            path = os.path.join(dirpath, fn)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()
