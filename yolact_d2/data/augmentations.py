"""YOLACT's SSD training augmentation as Detectron2 Augmentations / Transforms.

The official pipeline (SSDAugmentation in dbolya/yolact utils/augmentations.py) runs, in order:
photometric distortion -> expand (zoom out, mean fill) -> random IoU-constrained crop -> random
horizontal mirror -> resize to 550x550 (squash) -> drop boxes whose side is too small.
Each step here is an ``Augmentation`` (the random policy) returning a ``Transform`` (the
deterministic operation), so the steps compose with Detectron2's ``AugmentationList``.

The crop needs the boxes and their crowd flags, and decides which instances survive; Detectron2's
``AugInput`` carries neither flags nor per-instance masks, hence :class:`InstanceAugInput`.
"""
import numpy as np
import cv2
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, NoOpTransform, Transform, TransformList

__all__ = [
    "YOLACT_MEAN_BGR",
    "PhotometricDistortTransform",
    "RandomPhotometricDistort",
    "ExpandTransform",
    "RandomExpand",
    "InstanceCropTransform",
    "RandomSampleCrop",
    "CV2ResizeTransform",
    "YolactResize",
    "InstanceAugInput",
    "build_ssd_augmentation",
]

# Official YOLACT pixel means (BGR), used to fill expanded / padded areas.
YOLACT_MEAN_BGR = (103.94, 116.78, 123.68)


# ----------------------------------------------------------------------------- photometric
class PhotometricDistortTransform(Transform):
    """SSD photometric distortion with fixed parameters (None = that step is skipped).

    Official order: brightness; then either [contrast, to-HSV, saturation, hue, to-BGR] or
    [to-HSV, saturation, hue, to-BGR, contrast]. Arithmetic is in float32 on 0..255 values with
    OpenCV's float HSV (H in degrees); official keeps floats unclipped until normalisation, our
    pipeline hands uint8 images to the model, so the result is clipped to 0..255 and rounded.
    """

    def __init__(self, brightness_delta=None, contrast_alpha=None, contrast_last=False,
                 saturation_factor=None, hue_delta=None):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        x = img.astype(np.float32)
        if self.brightness_delta is not None:
            x += self.brightness_delta
        if self.contrast_alpha is not None and not self.contrast_last:
            x *= self.contrast_alpha
        hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
        if self.saturation_factor is not None:
            hsv[:, :, 1] *= self.saturation_factor
        if self.hue_delta is not None:
            hue = hsv[:, :, 0] + self.hue_delta
            hue[hue > 360.0] -= 360.0
            hue[hue < 0.0] += 360.0
            hsv[:, :, 0] = hue
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        if self.contrast_alpha is not None and self.contrast_last:
            x *= self.contrast_alpha
        if img.dtype == np.uint8:
            return np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return x.astype(img.dtype)

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        return NoOpTransform()


class RandomPhotometricDistort(T.Augmentation):
    """Samples a :class:`PhotometricDistortTransform` like the official PhotometricDistort:
    every step happens with probability 0.5 — brightness delta ~ U(-32, 32), contrast
    ~ U(0.5, 1.5), saturation ~ U(0.5, 1.5), hue delta ~ U(-18, 18) degrees; contrast goes
    first or last with probability 0.5. Expects a BGR image (like the official code)."""

    def __init__(self, brightness_delta=32.0, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta=18.0, prob=0.5):
        super().__init__()
        if not 0 <= brightness_delta <= 255:
            raise ValueError(f"brightness_delta must be in [0, 255], got {brightness_delta}")
        if not 0 <= hue_delta <= 360:
            raise ValueError(f"hue_delta must be in [0, 360], got {hue_delta}")
        for name, (lo, hi) in (("contrast_range", contrast_range), ("saturation_range", saturation_range)):
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must satisfy 0 <= lower <= upper, got {(lo, hi)}")
        self._init(locals())

    def _maybe(self, low, high):
        return float(np.random.uniform(low, high)) if np.random.uniform() < self.prob else None

    def get_transform(self, image):
        brightness = self._maybe(-self.brightness_delta, self.brightness_delta)
        contrast_last = bool(np.random.uniform() < 0.5)
        contrast = self._maybe(*self.contrast_range)
        saturation = self._maybe(*self.saturation_range)
        hue = self._maybe(-self.hue_delta, self.hue_delta)
        return PhotometricDistortTransform(brightness, contrast, contrast_last, saturation, hue)


# ----------------------------------------------------------------------------- expand / pad
class ExpandTransform(Transform):
    """Place the image at integer (left, top) on an (out_h, out_w) canvas filled with `fill`
    (per channel); masks / segmentations are filled with 0. Also used as bottom-right padding."""

    def __init__(self, left, top, out_w, out_h, fill=YOLACT_MEAN_BGR, seg_fill=0, in_w=None,
                 in_h=None):
        super().__init__()
        self._set_attributes(locals())

    def _paste(self, img, fill):
        h, w = img.shape[:2]
        if self.left + w > self.out_w or self.top + h > self.out_h:
            raise ValueError(f"ExpandTransform: a {w}x{h} image at ({self.left}, {self.top}) does "
                             f"not fit a {self.out_w}x{self.out_h} canvas.")
        bottom, right = self.out_h - self.top - h, self.out_w - self.left - w
        if img.ndim == 2 or (img.ndim == 3 and 1 <= img.shape[2] <= 4):
            # OpenCV fills the border much faster than numpy broadcasting.
            value = np.broadcast_to(np.asarray(fill, np.float64), img.shape[2:] or (1,)).tolist()
            out = cv2.copyMakeBorder(img, self.top, bottom, self.left, right, cv2.BORDER_CONSTANT,
                                     value=value)
            return out.reshape((self.out_h, self.out_w) + img.shape[2:])
        canvas = np.empty((self.out_h, self.out_w) + img.shape[2:], dtype=img.dtype)
        canvas[...] = fill
        canvas[self.top:self.top + h, self.left:self.left + w] = img
        return canvas

    def apply_image(self, img):
        fill = np.asarray(self.fill, dtype=np.float64)
        if img.ndim == 3 and fill.size not in (1, img.shape[2]):
            raise ValueError(f"fill has {fill.size} values but the image has {img.shape[2]} channels")
        if img.ndim == 2:
            fill = fill.mean()
        if img.dtype == np.uint8:
            fill = np.rint(fill).astype(np.uint8)
        return self._paste(img, fill)

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64).copy()
        coords[:, 0] += self.left
        coords[:, 1] += self.top
        return coords

    def apply_segmentation(self, segmentation):
        return self._paste(segmentation, self.seg_fill)

    def inverse(self):
        if self.in_w is None or self.in_h is None:
            raise NotImplementedError("ExpandTransform.inverse needs in_w and in_h")
        return CropTransform(self.left, self.top, self.in_w, self.in_h, self.out_w, self.out_h)


class RandomExpand(T.Augmentation):
    """Official Expand: with probability `prob` (0.5), zoom out by ratio ~ U(1, max_ratio) (4):
    the image goes at (int(left), int(top)), left ~ U(0, W*ratio - W), on an
    int(H*ratio) x int(W*ratio) canvas filled with the pixel mean."""

    def __init__(self, max_ratio=4.0, fill=YOLACT_MEAN_BGR, prob=0.5):
        super().__init__()
        if max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
        self._init(locals())

    def get_transform(self, image):
        if np.random.uniform() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        ratio = np.random.uniform(1, self.max_ratio)
        left = np.random.uniform(0, w * ratio - w)
        top = np.random.uniform(0, h * ratio - h)
        return ExpandTransform(int(left), int(top), int(w * ratio), int(h * ratio), self.fill,
                               in_w=w, in_h=h)


# ----------------------------------------------------------------------------- crop
def _clip_polygon_to_rect(poly, x0, y0, x1, y1):
    """Sutherland-Hodgman clip of a (K, 2) polygon to the rectangle; may return (0, 2)."""
    def clip(points, axis, bound, keep_greater):
        out = []
        n = len(points)
        for i in range(n):
            cur, nxt = points[i], points[(i + 1) % n]
            cur_in = cur[axis] >= bound if keep_greater else cur[axis] <= bound
            nxt_in = nxt[axis] >= bound if keep_greater else nxt[axis] <= bound
            if cur_in:
                out.append(cur)
            if cur_in != nxt_in:
                t = (bound - cur[axis]) / (nxt[axis] - cur[axis])
                out.append(cur + t * (nxt - cur))
        return out

    points = [np.asarray(p, dtype=np.float64) for p in poly]
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if not points:
            break
        points = clip(points, axis, bound, keep_greater)
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


class InstanceCropTransform(CropTransform):
    """A crop that also records which instances survive it (`keep`, (N,) bool over the boxes it
    was sampled for); polygons are clipped to the crop (no shapely needed)."""

    def __init__(self, x0, y0, w, h, orig_w=None, orig_h=None, keep=None):
        super().__init__(x0, y0, w, h, orig_w, orig_h)
        self.keep = keep

    def apply_polygons(self, polygons):
        out = []
        for p in polygons:
            clipped = _clip_polygon_to_rect(p, self.x0, self.y0, self.x0 + self.w, self.y0 + self.h)
            out.append(self.apply_coords(clipped))
        return out


class RandomSampleCrop(T.Augmentation):
    """Official RandomSampleCrop (from SSD).

    Repeatedly pick a mode uniformly from `min_ious` (None: keep the whole image). For a mode,
    try up to `max_trials` crops: side ~ U(min_scale, 1) * image side, h/w within
    [1/max_aspect, max_aspect], top-left ~ U(1, W - w) (sic, numpy argument order), rounded to
    an int rect. A crop is accepted when at least one non-crowd box has its centre strictly
    inside it; every box whose centre is inside is kept (crowd boxes included), the others are
    dropped; kept boxes are clipped to the crop.

    The official IoU test reads ``overlap.min() < min_iou and max_iou < overlap.max()`` with
    max_iou = inf, so it never rejects a crop (the author kept that: fixing it halved mAP).
    `strict_iou=False` (default) reproduces that; `strict_iou=True` rejects crops whose best IoU
    with any box is below the mode's min IoU.
    """

    input_args = ("image", "boxes", "is_crowd")

    def __init__(self, min_ious=(None, 0.1, 0.3, 0.7, 0.9, 0.0), min_scale=0.3, max_aspect=2.0,
                 max_trials=50, strict_iou=False):
        super().__init__()
        if None not in min_ious:
            raise ValueError("min_ious must contain None (the keep-the-image mode), as the "
                             "official sampler does, so sampling always terminates.")
        self._init(locals())

    def get_transform(self, image, boxes, is_crowd):
        h, w = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        is_crowd = np.asarray(is_crowd, dtype=bool).reshape(-1)
        if not (~is_crowd).any():
            return NoOpTransform()  # nothing to keep; the mapper drops such images anyway
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        while True:
            min_iou = self.min_ious[np.random.randint(len(self.min_ious))]
            if min_iou is None:
                return NoOpTransform()
            for _ in range(self.max_trials):
                cw = np.random.uniform(self.min_scale * w, w)
                ch = np.random.uniform(self.min_scale * h, h)
                if ch / cw < 1.0 / self.max_aspect or ch / cw > self.max_aspect:
                    continue
                # Official: numpy's uniform(W - w), i.e. low=W - w, high=1: between 1 and W - w.
                left = np.random.uniform(w - cw, 1.0)
                top = np.random.uniform(h - ch, 1.0)
                x0, y0 = int(left), int(top)
                x1, y1 = min(int(left + cw), w), min(int(top + ch), h)
                if self.strict_iou and _iou_with_rect(boxes, (x0, y0, x1, y1)).max() < min_iou:
                    continue
                keep = ((x0 < centers[:, 0]) & (y0 < centers[:, 1])
                        & (x1 > centers[:, 0]) & (y1 > centers[:, 1]))
                if not (keep & ~is_crowd).any():
                    continue
                return InstanceCropTransform(x0, y0, x1 - x0, y1 - y0, w, h, keep=keep)


def _iou_with_rect(boxes, rect):
    """IoU (N,) of XYXY boxes (N, 4) with one rect (4,)."""
    ix = np.clip(np.minimum(boxes[:, 2], rect[2]) - np.maximum(boxes[:, 0], rect[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], rect[3]) - np.maximum(boxes[:, 1], rect[1]), 0, None)
    inter = ix * iy
    area_a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_b = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


# ----------------------------------------------------------------------------- resize
class CV2ResizeTransform(Transform):
    """Resize with OpenCV INTER_LINEAR, as the official code does (it equals the model's
    test-time F.interpolate(bilinear, align_corners=False); D2's ResizeTransform uses PIL, which
    antialiases when shrinking). Label maps (apply_segmentation) use nearest. Instance masks in
    InstanceAugInput are sampled bilinearly at the same positions (official: masks are resized
    like image channels, then rounded)."""

    def __init__(self, h, w, new_h, new_w):
        super().__init__()
        self._set_attributes(locals())

    def _resize(self, img, interp):
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"CV2ResizeTransform expected a {self.h}x{self.w} input, got "
                             f"{img.shape[0]}x{img.shape[1]}")
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=interp)
        return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out

    def apply_image(self, img):
        return self._resize(img, cv2.INTER_LINEAR)

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64).copy()
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords

    def apply_segmentation(self, segmentation):
        return self._resize(segmentation, cv2.INTER_NEAREST)

    def inverse(self):
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w)


class YolactResize(T.Augmentation):
    """Resize to the network input.

    Default (official): squash to size x size. With `preserve_aspect_ratio=True`, scale so the
    longer side is `size` (the size rule of the model's "shortest_edge" mode), then pad bottom/right to
    size x size with `fill` (the official aspect-preserving mode instead keeps a variable size of
    ~size^2 area, which batches badly; padding keeps a fixed input)."""

    def __init__(self, size=550, preserve_aspect_ratio=False, fill=YOLACT_MEAN_BGR):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        if not self.preserve_aspect_ratio:
            return CV2ResizeTransform(h, w, self.size, self.size)
        # The model's test-time rule for "shortest_edge" inputs (Detectron2's ResizeShortestEdge
        # with the long side capped at `size`, rounding half up): train and test sizes agree.
        new_h, new_w = T.ResizeShortestEdge.get_output_shape(h, w, self.size, self.size)
        new_h, new_w = max(1, min(self.size, new_h)), max(1, min(self.size, new_w))
        return TransformList([
            CV2ResizeTransform(h, w, new_h, new_w),
            ExpandTransform(0, 0, self.size, self.size, self.fill, in_w=new_w, in_h=new_h),
        ])


# ----------------------------------------------------------------------------- lazy masks
def _inverse_step(t, in_hw, out_hw):
    """For the axis-aligned transforms whose masks we defer: (inverse (2, 3) map from output
    pixel indices to input pixel indices, forward (2, 3) map of pixel-edge coordinates, exact);
    None for any other transform."""
    if isinstance(t, ExpandTransform) and t.seg_fill == 0:
        return (np.array([[1, 0, -t.left], [0, 1, -t.top]], np.float64),
                np.array([[1, 0, t.left], [0, 1, t.top]], np.float64), True)
    if isinstance(t, CropTransform):
        return (np.array([[1, 0, t.x0], [0, 1, t.y0]], np.float64),
                np.array([[1, 0, -t.x0], [0, 1, -t.y0]], np.float64), True)
    if isinstance(t, T.HFlipTransform):
        return (np.array([[-1, 0, in_hw[1] - 1], [0, 1, 0]], np.float64),
                np.array([[-1, 0, in_hw[1]], [0, 1, 0]], np.float64), True)
    if isinstance(t, CV2ResizeTransform):
        # cv2.resize INTER_LINEAR samples input (u + 0.5) * in / out - 0.5 for output pixel u.
        sx, sy = in_hw[1] / out_hw[1], in_hw[0] / out_hw[0]
        return (np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]], np.float64),
                np.array([[1 / sx, 0, 0], [0, 1 / sy, 0]], np.float64), False)
    return None


class _DeferredMasks:
    """(N, H0, W0) uint8 instance masks plus the pending geometry: an inverse affine map from
    current pixel indices to source pixel indices, and the current size.

    Why: expand (up to 4x per side) then crop would otherwise allocate and copy N full expanded
    canvases; composing the axis-aligned steps and sampling once (integer maps exactly; with a
    resize, bilinearly at cv2.resize's sampling positions) costs only the output size."""

    def __init__(self, src):
        self.src = src
        self.inv = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
        self.hw = src.shape[1:]
        self.exact = True  # the pending map is an integer shift / flip
        # Pixels of the current canvas that come from the source (x0, y0, x1, y1); outside it
        # (expanded or padded borders) masks are 0 even where the map would reach cropped-away
        # source pixels.
        self.valid = (0, 0, src.shape[2], src.shape[1])

    def compose(self, inv_step, fwd_edges, out_hw, exact):
        self.inv = self.inv @ np.vstack([inv_step, [0, 0, 1]])
        x0, y0, x1, y1 = self.valid
        corners = fwd_edges @ np.array([[x0, x1], [y0, y1], [1, 1]], np.float64)
        xs, ys = np.sort(np.rint(corners[0])), np.sort(np.rint(corners[1]))
        h, w = out_hw
        self.valid = (int(np.clip(xs[0], 0, w)), int(np.clip(ys[0], 0, h)),
                      int(np.clip(xs[1], 0, w)), int(np.clip(ys[1], 0, h)))
        self.hw = tuple(out_hw)
        self.exact = self.exact and exact

    def filter(self, keep):
        self.src = self.src[keep]

    def materialize(self):
        identity = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
        h, w = self.hw
        if np.array_equal(self.inv, identity) and (h, w) == self.src.shape[1:]:
            return self.src
        out = np.zeros((len(self.src), h, w), np.uint8)
        flags = (cv2.INTER_NEAREST if self.exact else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
        x0, y0, x1, y1 = self.valid
        for i, m in enumerate(self.src):
            warped = cv2.warpAffine(m, self.inv, (w, h), flags=flags,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            out[i, y0:y1, x0:x1] = warped[y0:y1, x0:x1]
        self.src, self.inv, self.exact, self.valid = out, identity, True, (0, 0, w, h)
        return out


# ----------------------------------------------------------------------------- input container
class InstanceAugInput(T.AugInput):
    """AugInput that also carries per-instance data through geometric transforms.

    Attributes (N instances):
        image: (H, W, C) uint8.
        boxes: (N, 4) float64 XYXY absolute; clipped to the image after every transform.
        is_crowd: (N,) bool.
        masks: (N, H, W) uint8 0/1 instance masks, or None; the axis-aligned steps are
            composed and sampled once, on access (see _DeferredMasks).
        polygons: list (N) of lists of (K, 2) float arrays, or None.
        indices: (N,) int64, the position of each surviving instance in the input.
    A transform with a `keep` attribute ((N,) bool, see InstanceCropTransform) drops instances.
    """

    def __init__(self, image, boxes, is_crowd, masks=None, polygons=None):
        super().__init__(image)
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        n = len(self.boxes)
        self.is_crowd = np.asarray(is_crowd, dtype=bool).reshape(-1)
        if len(self.is_crowd) != n:
            raise ValueError(f"is_crowd has {len(self.is_crowd)} entries for {n} boxes")
        if masks is not None and (masks.ndim != 3 or masks.shape != (n,) + image.shape[:2]):
            raise ValueError(f"masks must be (N, H, W) = {(n,) + image.shape[:2]}, got {masks.shape}")
        if polygons is not None and len(polygons) != n:
            raise ValueError(f"polygons has {len(polygons)} entries for {n} boxes")
        self._masks = None if masks is None else _DeferredMasks(masks)
        self.polygons = polygons
        self.indices = np.arange(n, dtype=np.int64)

    @property
    def masks(self):
        """(N, H, W) uint8 instance masks in the current geometry (computed on first access)."""
        return None if self._masks is None else self._masks.materialize()

    def transform(self, tfm):
        for t in (tfm.transforms if isinstance(tfm, TransformList) else [tfm]):
            self._apply_one(t)

    def _apply_one(self, t):
        if isinstance(t, NoOpTransform):
            return
        in_hw = self.image.shape[:2]
        self.image = t.apply_image(self.image)
        h, w = self.image.shape[:2]
        if len(self.boxes):
            boxes = t.apply_box(self.boxes)
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
            self.boxes = boxes
        if self._masks is not None:
            step = _inverse_step(t, in_hw, (h, w))
            if step is not None:
                self._masks.compose(step[0], step[1], (h, w), step[2])
            else:  # any other transform: apply it to each materialised mask
                masks = [t.apply_segmentation(m) for m in self._masks.materialize()]
                self._masks = _DeferredMasks(np.stack(masks).astype(np.uint8) if masks
                                             else np.zeros((0, h, w), np.uint8))
        if self.polygons is not None:
            # Clipping can leave slivers of < 3 points: those are no polygon any more.
            self.polygons = [[q for q in t.apply_polygons([p.copy() for p in polys]) if len(q) >= 3]
                             if polys else [] for polys in self.polygons]
        keep = getattr(t, "keep", None)
        if keep is not None:
            self.filter(np.asarray(keep, dtype=bool))

    def filter(self, keep):
        """Keep only the instances where `keep` ((N,) bool) is True."""
        self.boxes = self.boxes[keep]
        self.is_crowd = self.is_crowd[keep]
        self.indices = self.indices[keep]
        if self._masks is not None:
            self._masks.filter(keep)
        if self.polygons is not None:
            self.polygons = [p for p, k in zip(self.polygons, keep) if k]


def build_ssd_augmentation(size=550, mean=YOLACT_MEAN_BGR, photometric_distort=True, expand=True,
                           random_sample_crop=True, random_mirror=True,
                           preserve_aspect_ratio=False, expand_max_ratio=4.0):
    """The official training augmentation (SSDAugmentation) as a list of D2 Augmentations, in
    the official order. Small-box discarding is done by YolactDatasetMapper after these."""
    augs = []
    if photometric_distort:
        augs.append(RandomPhotometricDistort())
    if expand:
        augs.append(RandomExpand(max_ratio=expand_max_ratio, fill=mean))
    if random_sample_crop:
        augs.append(RandomSampleCrop())
    if random_mirror:
        augs.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
    augs.append(YolactResize(size, preserve_aspect_ratio=preserve_aspect_ratio, fill=mean))
    return augs
