"""YolactDatasetMapper: Detectron2 dataset dict -> YOLACT training / test input.

Why not Detectron2's DatasetMapper: it drops crowd annotations (YOLACT's loss needs the crowd
boxes to neutralise priors) and builds an AugInput without boxes, so a box-aware crop such as
SSD's RandomSampleCrop cannot run in it.
"""
import copy
import logging

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, Boxes, Instances, PolygonMasks

from .augmentations import InstanceAugInput, YolactResize

__all__ = ["YolactDatasetMapper", "AnnotationError", "ImageReadError", "check_polygons", "check_rle"]

logger = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """An annotation that cannot be used; the message names the image file and annotation."""


def check_polygons(polygons, where: str) -> None:
    """Raise AnnotationError naming `where` unless every polygon is a flat, finite list of >= 3 x, y pairs."""
    for k, poly in enumerate(polygons):
        if not isinstance(poly, (list, tuple, np.ndarray)):
            raise AnnotationError(f"{where}: polygon {k} is {type(poly).__name__}, "
                                  "expected a flat list [x1, y1, x2, y2, ...].")
        if len(poly) % 2 != 0:
            raise AnnotationError(f"{where}: polygon {k} has an odd number of "
                                  f"coordinates ({len(poly)}); expected x, y pairs.")
        if len(poly) < 6:
            raise AnnotationError(f"{where}: polygon {k} has {len(poly) // 2} points; a "
                                  "polygon needs at least 3.")
        if not np.isfinite(np.asarray(poly, dtype=np.float64)).all():
            raise AnnotationError(f"{where}: polygon {k} has non-finite coordinates.")


def _compressed_run_lengths(counts: str):
    """Run lengths of a COCO compressed RLE string, or None if it is malformed.

    The format (pycocotools' rleToString): each run in 5-bit groups, least significant first, as
    chr(48 + group) with 0x20 set while more groups follow and 0x10 of the last group the sign;
    from the fourth run on, the difference to the run two before. Why decode it ourselves:
    pycocotools decodes any string without a check, into a garbage mask or a ValueError that
    names nothing."""
    runs = []
    value = shift = 0
    for ch in counts:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value = shift = 0
    return None if shift else runs


def check_rle(segm, where: str) -> None:
    """Raise AnnotationError naming `where` unless `segm` is an RLE dict whose "size" is [h, w] and
    whose "counts" (compressed string or uncompressed list) are non-negative runs summing to h*w."""
    size, counts = segm.get("size"), segm.get("counts")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in size)):
        raise AnnotationError(f"{where}: RLE 'size' {size!r} is not [height, width].")
    if isinstance(counts, bytes):
        counts = counts.decode("latin-1")
    if isinstance(counts, str):
        runs = _compressed_run_lengths(counts)
        if runs is None:
            raise AnnotationError(f"{where}: corrupt RLE: 'counts' {counts[:40]!r} is not a valid "
                                  "compressed RLE string (pycocotools' mask.encode format).")
    elif isinstance(counts, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in counts):
        runs = list(counts)
    else:
        raise AnnotationError(f"{where}: RLE 'counts' of type {type(counts).__name__} is neither a "
                              "compressed string nor a list of run lengths.")
    if any(r < 0 for r in runs):
        raise AnnotationError(f"{where}: corrupt RLE: 'counts' has a negative run length.")
    h, w = int(size[0]), int(size[1])
    if sum(runs) != h * w:
        raise AnnotationError(f"{where}: corrupt RLE: its run lengths cover {sum(runs)} pixels, but "
                              f"its size {h}x{w} has {h * w}. Re-encode the mask (pycocotools mask.encode).")


class ImageReadError(OSError):
    """An image file that is missing or cannot be decoded; the message names the file."""


def _where(dataset_dict, ann, index):
    ann_id = ann.get("id", None)
    ann_desc = f"annotation id={ann_id}" if ann_id is not None else f"annotation #{index}"
    return (f"image {dataset_dict.get('file_name')!r} (image_id={dataset_dict.get('image_id')}), "
            f"{ann_desc}")


class YolactDatasetMapper:
    """Maps one Detectron2 dataset dict to the model input.

    Training output: {"image": uint8 (3, H, W) tensor of the augmented image (image_format
    channel order), "height"/"width" (original size), "file_name", "image_id",
    "instances": Instances(gt_boxes, gt_classes, gt_masks) of the non-crowd annotations in
    augmented-image pixels, "crowd_boxes": (M, 4) float32 XYXY in the same pixels}.
    Test output (is_train=False): the image at its original size (plus any given augmentations,
    normally none): the model resizes it itself.

    Args:
        is_train: training (augment, build targets) or inference (image only).
        augmentations: list of D2 Augmentations (e.g. build_ssd_augmentation()). Crop-type
            augmentations may use "boxes" and "is_crowd" of the InstanceAugInput.
        image_format: format for detectron2's read_image; the SSD photometric distortion
            assumes "BGR" like the official code.
        mask_format: "bitmask" (BitMasks; works with RLE and polygons) or "polygon"
            (PolygonMasks; polygon annotations only).
        num_classes: if given, category ids must be in [0, num_classes) (a clear error otherwise).
        min_box_rel_size: instances whose augmented box width or height is not larger than this
            fraction of the augmented image side are dropped (official discard_box_width/height
            = 4/550, i.e. 4 px at 550. The official code compares it against pixel sizes, which
            makes it a no-op; we apply the intended relative size).
        max_retries: when augmentation leaves no non-crowd instance, the official loader draws
            another sample instead of training on an all-background image. We draw a fresh
            augmentation of the same image up to `max_retries` times, then try it with only the
            final resize; if still nothing is left, return None so Detectron2's MapDataset
            substitutes another image.
    """

    def __init__(self, is_train=True, augmentations=(), image_format="BGR", mask_format="bitmask",
                 num_classes=None, min_box_rel_size=4.0 / 550, max_retries=10):
        if mask_format not in ("bitmask", "polygon"):
            raise ValueError(f"mask_format must be 'bitmask' or 'polygon', got {mask_format!r}")
        self.is_train = is_train
        if isinstance(augmentations, T.AugmentationList):
            augmentations = augmentations.augs
        augmentations = list(augmentations or [])
        self.augmentations = T.AugmentationList(augmentations)
        # The fall-back for a last retry: only the resize-type augmentations (no randomness).
        self._resize_only = T.AugmentationList(
            [a for a in augmentations if isinstance(a, (YolactResize, T.Resize, T.ResizeShortestEdge))])
        self.image_format = image_format
        self.mask_format = mask_format
        self.num_classes = num_classes
        self.min_box_rel_size = float(min_box_rel_size)
        self.max_retries = int(max_retries)
        logger.info(f"[YolactDatasetMapper] is_train={is_train}, augmentations: {self.augmentations}")

    # ------------------------------------------------------------------ reading
    def _read_image(self, dataset_dict):
        file_name = dataset_dict.get("file_name")
        if not file_name:
            raise ImageReadError(f"Dataset dict for image_id={dataset_dict.get('image_id')} has "
                                 "no 'file_name'.")
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except FileNotFoundError as e:
            raise ImageReadError(f"Image file not found: {file_name!r} (image_id="
                                 f"{dataset_dict.get('image_id')}). Check the dataset's image_root "
                                 "and that the file exists.") from e
        except Exception as e:  # PIL raises several types for truncated / non-image files
            raise ImageReadError(f"Cannot decode image file {file_name!r} (image_id="
                                 f"{dataset_dict.get('image_id')}): {type(e).__name__}: {e}. The file "
                                 "is corrupt or not an image; replace it or remove it from the "
                                 "annotations.") from e
        if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ImageReadError(f"Image file {file_name!r} decoded to an unusable array of shape "
                                 f"{image.shape}.")
        # Our own check (not utils.check_image_size): name both sizes as height x width, and say
        # that the annotations' height/width are what to fix.
        expected = (dataset_dict.get("height"), dataset_dict.get("width"))
        if expected != (None, None) and expected != image.shape[:2]:
            raise ImageReadError(
                f"Image file {file_name!r} (image_id={dataset_dict.get('image_id')}) is "
                f"{image.shape[0]}x{image.shape[1]} (height x width) but its annotations say "
                f"height={expected[0]}, width={expected[1]}. Fix the image's height and width in the "
                "annotation json (or replace the file).")
        dataset_dict.setdefault("height", image.shape[0])  # the original size, for inference
        dataset_dict.setdefault("width", image.shape[1])
        return image

    # ------------------------------------------------------------------ annotations
    def _check_annotations(self, dataset_dict, image_hw):
        """Validated, clipped copies of the annotations: list of (ann, box XYXY (4,) float64).

        Raises AnnotationError for unusable annotations; drops (with a warning) boxes that are
        empty once clipped to the image."""
        h, w = image_hw
        out = []
        for i, ann in enumerate(dataset_dict.get("annotations", [])):
            where = _where(dataset_dict, ann, i)
            cat = ann.get("category_id")
            if isinstance(cat, bool) or not isinstance(cat, (int, np.integer)) or cat < 0 or (
                    self.num_classes is not None and cat >= self.num_classes):
                valid = f"0..{self.num_classes - 1}" if self.num_classes is not None else ">= 0"
                raise AnnotationError(
                    f"{where}: category_id {cat!r} is not in the dataset (valid contiguous ids: "
                    f"{valid}). Fix the annotation or the dataset's categories.")
            if "bbox" not in ann or "bbox_mode" not in ann:
                raise AnnotationError(f"{where}: missing 'bbox' / 'bbox_mode'.")
            box = np.asarray(BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS),
                             dtype=np.float64)
            if box.shape != (4,) or not np.isfinite(box).all():
                raise AnnotationError(f"{where}: bbox {ann['bbox']!r} is not 4 finite numbers.")
            clipped = np.array([np.clip(box[0], 0, w), np.clip(box[1], 0, h),
                                np.clip(box[2], 0, w), np.clip(box[3], 0, h)])
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                logger.warning(f"{where}: bbox {ann['bbox']!r} is empty inside the {w}x{h} image; "
                               "dropping this annotation.")
                continue
            crowd = bool(ann.get("iscrowd", 0))
            segm = ann.get("segmentation", None)
            if segm is None or (isinstance(segm, list) and len(segm) == 0):
                if not crowd:
                    raise AnnotationError(f"{where}: has no 'segmentation'; instance segmentation "
                                          "needs a polygon or RLE mask for every non-crowd object.")
            elif isinstance(segm, list):
                check_polygons(segm, where)
            elif isinstance(segm, dict):
                size = list(segm.get("size", []))
                if size != [h, w]:
                    raise AnnotationError(f"{where}: RLE size {size} does not match the image "
                                          f"size [{h}, {w}].")
                check_rle(segm, where)
                if self.mask_format == "polygon" and not crowd:
                    raise AnnotationError(f"{where}: is an RLE mask but mask_format='polygon'; use "
                                          "mask_format='bitmask' for datasets with RLE masks.")
            else:
                raise AnnotationError(f"{where}: 'segmentation' of type {type(segm).__name__} is "
                                      "neither a polygon list nor an RLE dict.")
            out.append((ann, clipped))
        return out

    @staticmethod
    def _decode_mask(segm, h, w):
        """(h, w) uint8 0/1 mask of a polygon list or RLE (pycocotools, like COCO eval)."""
        if segm is None or (isinstance(segm, list) and len(segm) == 0):
            return np.zeros((h, w), np.uint8)
        if isinstance(segm, list):
            rles = mask_util.frPyObjects([list(map(float, p)) for p in segm], h, w)
            return mask_util.decode(mask_util.merge(rles))
        if isinstance(segm.get("counts"), list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, h, w)
        return mask_util.decode(segm)

    # ------------------------------------------------------------------ main
    def __call__(self, dataset_dict):
        return self.map_with_transforms(dataset_dict)[0]

    def map_with_transforms(self, dataset_dict):
        """(the mapped dict or None, the TransformList that made its image, or None): what a
        frame-pair mapper needs to apply the same augmentation to another frame."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image(dataset_dict)
        h, w = image.shape[:2]

        if not self.is_train:
            aug_input = T.AugInput(image)
            transforms = self.augmentations(aug_input)
            dataset_dict.pop("annotations", None)
            dataset_dict["image"] = torch.as_tensor(
                np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
            return dataset_dict, transforms

        anns = self._check_annotations(dataset_dict, (h, w))
        boxes = np.stack([b for _, b in anns]) if anns else np.zeros((0, 4))
        is_crowd = np.array([bool(a.get("iscrowd", 0)) for a, _ in anns], dtype=bool)
        classes = np.array([int(a["category_id"]) for a, _ in anns], dtype=np.int64)
        if self.mask_format == "bitmask":
            masks = (np.stack([self._decode_mask(a.get("segmentation"), h, w) for a, _ in anns])
                     if anns else np.zeros((0, h, w), np.uint8))  # (N, H, W)
            polygons = None
        else:
            masks = None
            polygons = [[np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in a["segmentation"]]
                        if isinstance(a.get("segmentation"), list) and not a.get("iscrowd", 0) else []
                        for a, _ in anns]

        for attempt in range(self.max_retries + 2):
            augs = self.augmentations if attempt <= self.max_retries else self._resize_only
            aug_input = InstanceAugInput(image, boxes, is_crowd, masks, polygons)
            transforms = augs(aug_input)
            result = self._targets(aug_input, classes)
            if result is not None:
                if attempt > 0:
                    logger.debug(f"{dataset_dict['file_name']}: kept instances after {attempt} "
                                 "re-drawn augmentations")
                instances, crowd_boxes = result
                dataset_dict.pop("annotations", None)
                dataset_dict["image"] = torch.as_tensor(
                    np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
                dataset_dict["instances"] = instances
                dataset_dict["crowd_boxes"] = crowd_boxes
                return dataset_dict, transforms
        logger.warning(f"{dataset_dict['file_name']}: no non-crowd instance survives augmentation "
                       f"(after {self.max_retries} re-draws); skipping this image.")
        return None, None

    def _targets(self, aug_input, classes):
        """(Instances, crowd_boxes) from an augmented input, or None if no non-crowd instance."""
        ih, iw = aug_input.image.shape[:2]
        boxes = aug_input.boxes
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        # Official rule: keep boxes strictly larger than the discard size (crowds included).
        keep = (bw > self.min_box_rel_size * iw) & (bh > self.min_box_rel_size * ih)
        # A non-crowd instance with no mask pixel left cannot supervise the mask branch.
        if aug_input.masks is not None:
            masks_nhw = aug_input.masks.astype(bool)  # (N, H, W)
            has_pixels = (masks_nhw.reshape(len(boxes), -1).any(axis=1) if len(boxes)
                          else np.zeros(0, dtype=bool))
            keep &= aug_input.is_crowd | has_pixels
        else:
            keep &= aug_input.is_crowd | np.array([len(p) > 0 for p in aug_input.polygons], dtype=bool)
        aug_input.filter(keep)
        objs = ~aug_input.is_crowd
        if not objs.any():
            return None
        if aug_input.masks is not None:
            masks_nhw = masks_nhw[keep][objs]  # (N, H, W) bool
        instances = Instances((ih, iw))
        instances.gt_boxes = Boxes(torch.as_tensor(aug_input.boxes[objs], dtype=torch.float32))
        instances.gt_classes = torch.as_tensor(classes[aug_input.indices[objs]], dtype=torch.int64)
        if aug_input.masks is not None:
            instances.gt_masks = BitMasks(torch.from_numpy(masks_nhw))
        else:
            instances.gt_masks = PolygonMasks(
                [[p.reshape(-1) for p in polys] for polys, o in zip(aug_input.polygons, objs) if o])
        crowd_boxes = torch.as_tensor(aug_input.boxes[~objs], dtype=torch.float32).reshape(-1, 4)
        return instances, crowd_boxes
