"""Registering COCO-format datasets: class names known at registration, annotations checked on load.

Detectron2's register_coco_instances learns the class names only when the json is loaded (a
Predictor or demo that never loads it shows "class 0"); its loader silently drops polygons with
fewer than 3 points, reports an unknown category id without naming the image, and lets pycocotools
decode a corrupt RLE into garbage. `register_coco_dataset` reads the json's categories when it
registers and checks the whole json when the dataset is first loaded, naming the file, image and
annotation of any problem.

One line in a LazyConfig registers a dataset and points the loader at it::

    dataloader.train.dataset.names = register_coco_dataset("my_train", "ann/train.json", "images/train")
"""
import collections
import functools
import json
import logging
import math
import mmap
import os
import re

from .mapper import AnnotationError, check_polygons, check_rle

__all__ = [
    "category_metadata",
    "check_coco_json",
    "json_dataset_metadata",
    "load_coco_json_checked",
    "load_json",
    "read_coco_categories",
    "register_coco_dataset",
    "register_dataset",
]

logger = logging.getLogger(__name__)

_CATEGORIES_KEY = b'"categories"'
_THEN_A_LIST = re.compile(rb"\s*:\s*\[")


def load_json(json_file, what="COCO annotation file"):
    """json.load with errors naming the file: FileNotFoundError ("<what> not found"), or
    AnnotationError when it is not valid json."""
    try:
        with open(json_file) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} not found: {json_file!r}") from e
    except ValueError as e:
        raise AnnotationError(f"{json_file!r} is not valid json: {e}") from e


def _load_json(json_file):
    """The COCO readers' full parse (one place, so tests can count full parses)."""
    return load_json(json_file)


def _list_at(buffer, start):
    """The json list starting at byte `start` of `buffer`, or None if it does not decode."""
    decoder = json.JSONDecoder()
    n = 1 << 16
    while True:
        # A multi-byte character cut at the chunk's end only spoils the tail: decoding then fails
        # (unterminated list) and a longer chunk is tried.
        chunk = buffer[start:start + n].decode("utf-8", errors="replace")
        try:
            return decoder.raw_decode(chunk)[0]
        except ValueError:
            if start + n >= len(buffer):
                return None
            n *= 4


def read_coco_categories(json_file):
    """The "categories" list of a COCO json, without parsing its "images" and "annotations".

    Why not json.load: COCO's train json is ~450 MB, and registration runs at config load (also for
    inference), for a list of a few kB. The file is memory-mapped, the key found by a byte search
    and only the list after it decoded. When the key is not found exactly once, the whole file is
    parsed instead; check_coco_json verifies the categories again when the dataset is loaded."""
    json_file = os.fspath(json_file)
    try:
        f = open(json_file, "rb")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"COCO annotation file not found: {json_file!r}") from e
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise AnnotationError(f"{json_file!r} is empty; not a COCO instances file.")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            starts = []
            pos = mm.find(_CATEGORIES_KEY)
            while pos != -1 and len(starts) < 2:
                m = _THEN_A_LIST.match(mm, pos + len(_CATEGORIES_KEY))
                if m:  # a key "categories" whose value is a list (a string value cannot be followed by ':')
                    starts.append(m.end() - 1)
                pos = mm.find(_CATEGORIES_KEY, pos + 1)
            if len(starts) == 1:
                categories = _list_at(mm, starts[0])
                if categories is not None:
                    return categories
    coco = _load_json(json_file)
    if not isinstance(coco, dict) or "categories" not in coco:
        raise AnnotationError(f"{json_file!r} has no 'categories' list; not a COCO instances file.")
    return coco["categories"]


def category_metadata(categories, json_file):
    """thing_classes and thing_dataset_id_to_contiguous_id of a COCO "categories" list, as
    Detectron2's load_coco_json sets them (names in sorted-id order; ids -> 0..C-1)."""
    if not isinstance(categories, list) or not categories:
        raise AnnotationError(f"{json_file!r}: 'categories' must be a non-empty list of "
                              f"{{'id': int, 'name': str}}, got {str(categories)[:80]}.")
    for k, cat in enumerate(categories):
        cat_id = cat.get("id") if isinstance(cat, dict) else None
        if isinstance(cat_id, bool) or not isinstance(cat_id, int) or not isinstance(cat.get("name"), str):
            raise AnnotationError(f"{json_file!r}: category #{k} {str(cat)[:80]} needs an integer 'id' "
                                  "and a string 'name'.")
    counts = collections.Counter(c["id"] for c in categories)
    repeated = sorted(i for i, n in counts.items() if n > 1)
    if repeated:
        raise AnnotationError(f"{json_file!r}: category ids {repeated} appear more than once in "
                              "'categories'; each class needs its own id.")
    ordered = sorted(categories, key=lambda c: c["id"])
    return dict(thing_classes=[c["name"] for c in ordered],
                thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(ordered)})


def _image_file_size(image_root, file_name):
    """(height, width) of an image file from its header, or None if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(os.path.join(image_root, file_name)) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001 - only used to word an error message
        return None


def _rle_size_error(where, img, size, image_root):
    """The message for an RLE whose size differs from the json's image size: the image file's
    real size tells whether the RLE or the json's height/width is wrong."""
    json_hw = [img.get("height"), img.get("width")]
    real = _image_file_size(image_root, img.get("file_name", "")) if image_root else None
    if real is not None and list(real) == size:
        return (f"{where}: the image file is {real[0]}x{real[1]} (height x width), as the RLE says, "
                f"but 'images' gives height={json_hw[0]}, width={json_hw[1]}. Fix the image's height "
                "and width in the json.")
    real_txt = f"; the image file is {real[0]}x{real[1]}" if real is not None else ""
    return (f"{where}: RLE size {size} does not match the image size {json_hw} in 'images'{real_txt}. "
            "Re-encode the mask at the image's size.")


def check_coco_json(json_file, image_root=None):
    """Raise AnnotationError for unusable annotations in a COCO instances json: no images, bad
    categories, unknown image or category id, invalid polygons (odd coordinate count, fewer than 3
    points), bad bbox, corrupt RLE or RLE of the wrong size (with `image_root`, the image file's
    real size says whether the RLE or the json's height/width is wrong). Warns, naming the file,
    when there are no annotations at all. Returns the parsed json."""
    coco = _load_json(json_file)
    if not isinstance(coco, dict):
        raise AnnotationError(f"{json_file!r} holds a json {type(coco).__name__}, not a COCO instances object.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise AnnotationError(f"{json_file!r} has no {key!r} list; not a COCO instances file.")
    if not coco["images"]:
        raise AnnotationError(f"{json_file!r} has an empty 'images' list: there is nothing to load.")
    if not coco["annotations"]:
        logger.warning(f"{json_file!r} has no annotations (\"annotations\": []): it can be used for "
                       "inference, but not to train or to evaluate.")
    cat_ids = sorted(category_metadata(coco["categories"], json_file)["thing_dataset_id_to_contiguous_id"])
    cat_set = set(cat_ids)
    images = {img.get("id"): img for img in coco["images"]}
    for ann in coco["annotations"]:
        img = images.get(ann.get("image_id"))
        if img is None:
            raise AnnotationError(f"{json_file!r}: annotation id={ann.get('id')} refers to image_id="
                                  f"{ann.get('image_id')}, which is not in 'images'.")
        where = (f"{json_file!r}: image {img.get('file_name')!r} (image_id={img['id']}), "
                 f"annotation id={ann.get('id')}")
        if ann.get("category_id") not in cat_set:
            raise AnnotationError(f"{where}: category_id {ann.get('category_id')!r} is not in the "
                                  f"dataset's categories (ids {cat_ids}). Fix the annotation or add "
                                  "the category.")
        bbox = ann.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            raise AnnotationError(f"{where}: bbox {bbox!r} is not [x, y, width, height] of 4 finite "
                                  "numbers.")
        segm = ann.get("segmentation")
        if isinstance(segm, list):
            check_polygons(segm, where)
        elif isinstance(segm, dict):
            size = list(segm.get("size", []))
            if size != [img.get("height"), img.get("width")]:
                raise AnnotationError(_rle_size_error(where, img, size, image_root))
            check_rle(segm, where)
        elif segm is not None:
            raise AnnotationError(f"{where}: 'segmentation' of type {type(segm).__name__} is "
                                  "neither a polygon list nor an RLE dict.")
    return coco


def load_coco_json_checked(json_file, image_root, dataset_name=None):
    """check_coco_json, then Detectron2's load_coco_json (keeping annotation ids for messages)."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    coco = check_coco_json(json_file, image_root)
    if dataset_name is not None:
        found = category_metadata(coco["categories"], json_file)
        meta = MetadataCatalog.get(dataset_name)
        for key, value in found.items():
            if meta.get(key, value) != value:
                raise AnnotationError(
                    f"Dataset {dataset_name!r}: the categories of {json_file!r} changed after it was "
                    f"registered ({key}: registered {meta.get(key)}, now {value}); register it again "
                    "(e.g. reload the config).")
    return load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])


def register_dataset(name, loader, metadata):
    """Register `loader` (no arguments -> list of dataset dicts) as `name` in Detectron2's
    DatasetCatalog and `metadata` in its MetadataCatalog. A no-op when `name` is already registered
    with the same metadata; otherwise that registration is replaced. Returns `name`."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if all(k in meta.as_dict() and meta.get(k) == v for k, v in metadata.items()):
            return name
        logger.info(f"Re-registering dataset {name!r} ({metadata.get('json_file', '')})")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    return name


def json_dataset_metadata(name, json_file, image_root, evaluator_type, metadata=None):
    """The metadata of a dataset registered from a json with a "categories" list (COCO, YouTube-VIS):
    json_file, image_root, evaluator_type, the class names read now when the json exists (else a
    warning: they are set when it is loaded), then `metadata`."""
    meta = dict(json_file=json_file, image_root=image_root, evaluator_type=evaluator_type)
    if os.path.isfile(json_file):
        meta.update(category_metadata(read_coco_categories(json_file), json_file))
    else:
        logger.warning(f"Dataset {name!r}: {json_file!r} does not exist (yet); its class names will "
                       "be known once it is loaded.")
    meta.update(metadata or {})
    return meta


def register_coco_dataset(name, json_file, image_root, metadata=None):
    """Register a COCO-format instance dataset under `name` (like register_coco_instances, but with
    thing_classes known now and the json checked on load); re-registering the same files is a
    no-op. Returns `name`, so a config can register and select a dataset in one line.

    A json that does not exist yet is registered without class names (a warning says so); they
    are set when it is loaded."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    meta = json_dataset_metadata(name, json_file, image_root, "coco", metadata)
    return register_dataset(name, functools.partial(load_coco_json_checked, json_file, image_root, name), meta)
