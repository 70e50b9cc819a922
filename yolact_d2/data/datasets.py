"""Registering COCO-format datasets, with the annotation checks Detectron2's loader lacks.

Detectron2's load_coco_json silently drops polygons with fewer than 3 points and reports an
unknown category id without naming the image; `register_coco_dataset` checks the json first and
names the file, image and annotation of any problem.

One line in a LazyConfig registers a dataset and points the loader at it::

    dataloader.train.dataset.names = register_coco_dataset("my_train", "ann/train.json", "images/train")
"""
import json
import logging
import math
import os

from .mapper import AnnotationError, check_polygons

__all__ = ["check_coco_json", "load_coco_json_checked", "register_coco_dataset"]

logger = logging.getLogger(__name__)


def check_coco_json(json_file):
    """Raise AnnotationError for unusable annotations in a COCO instances json: unknown image or
    category id, invalid polygons (odd coordinate count, fewer than 3 points), bad bbox, RLE of the
    wrong size. Returns the parsed json."""
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"COCO annotation file not found: {json_file!r}") from e
    except ValueError as e:
        raise AnnotationError(f"{json_file!r} is not valid json: {e}") from e
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise AnnotationError(f"{json_file!r} has no {key!r} list; not a COCO instances file.")
    cat_ids = sorted(c["id"] for c in coco["categories"])
    cat_set = set(cat_ids)
    images = {img["id"]: img for img in coco["images"]}
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
                raise AnnotationError(f"{where}: RLE size {size} does not match the image size "
                                      f"[{img.get('height')}, {img.get('width')}].")
        elif segm is not None:
            raise AnnotationError(f"{where}: 'segmentation' of type {type(segm).__name__} is "
                                  "neither a polygon list nor an RLE dict.")
    return coco


def load_coco_json_checked(json_file, image_root, dataset_name=None):
    """check_coco_json, then Detectron2's load_coco_json (keeping annotation ids for messages)."""
    from detectron2.data.datasets import load_coco_json

    check_coco_json(json_file)
    return load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])


def register_coco_dataset(name, json_file, image_root, metadata=None):
    """Register a COCO-format instance dataset under `name` (like register_coco_instances, but
    checked on load); re-registering the same files is a no-op. Returns `name`, so a config can
    register and select a dataset in one line."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") == json_file and meta.get("image_root") == image_root:
            return name
        logger.info(f"Re-registering dataset {name!r} with {json_file}")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_json_checked(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  **(metadata or {}))
    return name
