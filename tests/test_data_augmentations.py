"""SSD augmentation as Detectron2 Augmentations: geometry of boxes and masks, hand-computed offsets,
the official sampling rules, and the photometric maths against a colorsys oracle."""
import colorsys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, TransformList

from yolact_d2.data.augmentations import (
    YOLACT_MEAN_BGR,
    CV2ResizeTransform,
    ExpandTransform,
    InstanceAugInput,
    InstanceCropTransform,
    PhotometricDistortTransform,
    RandomExpand,
    RandomPhotometricDistort,
    RandomSampleCrop,
    YolactResize,
    _clip_polygon_to_rect,
    build_ssd_augmentation,
)

# pycocotools on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _rect_scene(h=48, w=64, rects=((4, 6, 20, 30), (30, 10, 60, 40), (10, 30, 26, 46)), seed=0):
    """Image plus axis-aligned rectangle instances: a rectangle's mask box is its box exactly."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    boxes = np.array(rects, dtype=np.float64)
    masks = np.zeros((len(rects), h, w), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = 1
    return image, boxes, masks


def _mask_boxes(masks):
    """XYXY pixel-edge boxes (N, 4) of (N, H, W) masks (NaN for an empty mask)."""
    out = np.full((len(masks), 4), np.nan)
    for i in range(len(masks)):
        ys, xs = np.nonzero(masks[i])
        if len(xs):
            out[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return out


def _run(aug_list, image, boxes, masks, is_crowd=None, polygons=None):
    inp = InstanceAugInput(image, boxes, np.zeros(len(boxes), bool) if is_crowd is None else is_crowd,
                           masks, polygons)
    tfm = T.AugmentationList(aug_list)(inp)
    return inp, tfm


# ----------------------------------------------------------------------------- expand
def test_expand_transform_hand_computed():
    image, boxes, masks = _rect_scene()
    t = ExpandTransform(left=5, top=7, out_w=100, out_h=90, in_w=64, in_h=48)
    inp, _ = _run([_Fixed(t)], image, boxes, masks)
    assert inp.image.shape == (90, 100, 3)
    np.testing.assert_array_equal(inp.image[7:55, 5:69], image)
    np.testing.assert_array_equal(inp.image[0, 0], np.rint(YOLACT_MEAN_BGR).astype(np.uint8))
    np.testing.assert_array_equal(inp.image[89, 99], [104, 117, 124])
    np.testing.assert_allclose(inp.boxes[0], [4 + 5, 6 + 7, 20 + 5, 30 + 7])
    np.testing.assert_allclose(_mask_boxes(inp.masks), inp.boxes)
    assert inp.masks[:, :7].sum() == 0 and inp.masks[:, :, :5].sum() == 0
    # inverse (a crop) restores the image
    np.testing.assert_array_equal(t.inverse().apply_image(inp.image), image)


def test_random_expand_follows_official_sampling():
    image, boxes, masks = _rect_scene()
    h, w = image.shape[:2]
    for seed in range(20):
        np.random.seed(seed)
        u = np.random.uniform()
        if u >= 0.5:
            expected = None
        else:
            ratio = np.random.uniform(1, 4)
            left, top = np.random.uniform(0, w * ratio - w), np.random.uniform(0, h * ratio - h)
            expected = (int(left), int(top), int(w * ratio), int(h * ratio))
        np.random.seed(seed)
        t = RandomExpand().get_transform(image)
        if expected is None:
            assert isinstance(t, NoOpTransform)
        else:
            assert (t.left, t.top, t.out_w, t.out_h) == expected
            inp, _ = _run([_Fixed(t)], image, boxes, masks)
            np.testing.assert_allclose(_mask_boxes(inp.masks), inp.boxes)


# ----------------------------------------------------------------------------- crop
def test_crop_transform_hand_computed():
    image, boxes, masks = _rect_scene()
    t = InstanceCropTransform(10, 5, 30, 20, 64, 48, keep=np.array([True, True, False]))
    inp, _ = _run([_Fixed(t)], image, boxes, masks)
    assert inp.image.shape == (20, 30, 3)
    np.testing.assert_array_equal(inp.image, image[5:25, 10:40])
    # box 0 (4,6,20,30) clipped to the crop (10,5,40,25) -> (10,6,20,25) -> minus (10,5)
    np.testing.assert_allclose(inp.boxes, [[0, 1, 10, 20], [20, 5, 30, 20]])
    np.testing.assert_array_equal(inp.indices, [0, 1])
    np.testing.assert_allclose(_mask_boxes(inp.masks), inp.boxes)


def test_random_sample_crop_official_rules():
    image, boxes, masks = _rect_scene()
    h, w = image.shape[:2]
    is_crowd = np.array([False, False, True])
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    n_noop = 0
    for seed in range(200):
        np.random.seed(seed)
        t = RandomSampleCrop().get_transform(image, boxes, is_crowd)
        if isinstance(t, NoOpTransform):
            n_noop += 1
            continue
        x0, y0, x1, y1 = t.x0, t.y0, t.x0 + t.w, t.y0 + t.h
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert t.w >= int(0.3 * w) - 1 and t.h >= int(0.3 * h) - 1
        assert 0.5 - 0.1 <= t.h / t.w <= 2 + 0.2  # official ratio test is on the float sizes
        inside = (x0 < centers[:, 0]) & (centers[:, 0] < x1) & (y0 < centers[:, 1]) & (centers[:, 1] < y1)
        np.testing.assert_array_equal(t.keep, inside)
        assert (inside & ~is_crowd).any()
        inp, _ = _run([_Fixed(t)], image, boxes, masks, is_crowd)
        expect = np.stack([np.clip(boxes[inside][:, 0], x0, x1) - x0, np.clip(boxes[inside][:, 1], y0, y1) - y0,
                           np.clip(boxes[inside][:, 2], x0, x1) - x0, np.clip(boxes[inside][:, 3], y0, y1) - y0], 1)
        np.testing.assert_allclose(inp.boxes, expect)
        np.testing.assert_array_equal(inp.is_crowd, is_crowd[inside])
        np.testing.assert_allclose(_mask_boxes(inp.masks), inp.boxes)
    # The whole-image mode is 1 of 6 choices each round: roughly 1/6 of the draws.
    assert 15 <= n_noop <= 60


def test_random_sample_crop_needs_a_non_crowd_box():
    image, boxes, _ = _rect_scene()
    t = RandomSampleCrop().get_transform(image, boxes, np.ones(3, bool))
    assert isinstance(t, NoOpTransform)


def test_clip_polygon_to_rect():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    clipped = _clip_polygon_to_rect(square, 5, -1, 20, 4)
    xs, ys = clipped[:, 0], clipped[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (5, 10, 0, 4)
    area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
    assert area == pytest.approx(5 * 4)
    assert len(_clip_polygon_to_rect(square, 20, 20, 30, 30)) == 0


# ----------------------------------------------------------------------------- flip / resize
def test_flip_twice_is_identity_and_flip_box():
    image, boxes, masks = _rect_scene()
    flip = T.RandomFlip(prob=1.0, horizontal=True, vertical=False)
    inp, _ = _run([flip], image, boxes, masks)
    np.testing.assert_allclose(inp.boxes[0], [64 - 20, 6, 64 - 4, 30])
    np.testing.assert_array_equal(inp.image, image[:, ::-1])
    np.testing.assert_allclose(_mask_boxes(inp.masks), inp.boxes)
    inp2, _ = _run([flip], inp.image, inp.boxes, inp.masks)
    np.testing.assert_array_equal(inp2.image, image)
    np.testing.assert_array_equal(inp2.masks, masks)
    np.testing.assert_allclose(inp2.boxes, boxes)


def test_squash_resize_boxes_and_masks():
    image, boxes, masks = _rect_scene()
    inp, _ = _run([YolactResize(550)], image, boxes, masks)
    assert inp.image.shape == (550, 550, 3) and inp.masks.shape == (3, 550, 550)
    np.testing.assert_allclose(inp.boxes, boxes * [550 / 64, 550 / 48, 550 / 64, 550 / 48])
    assert np.abs(_mask_boxes(inp.masks) - inp.boxes).max() <= 1.0


def test_other_detectron2_transforms_apply_to_each_mask():
    """A transform we do not defer (D2's PIL ResizeTransform) runs on every mask."""
    image, boxes, masks = _rect_scene()
    inp, _ = _run([T.Resize((96, 128))], image, boxes, masks)
    assert inp.image.shape == (96, 128, 3) and inp.masks.shape == (3, 96, 128)
    np.testing.assert_allclose(inp.boxes, boxes * 2)
    np.testing.assert_allclose(_mask_boxes(inp.masks), inp.boxes)  # nearest 2x: exact


def test_aspect_preserving_resize_pads_with_mean():
    image, boxes, masks = _rect_scene()
    inp, tfm = _run([YolactResize(550, preserve_aspect_ratio=True)], image, boxes, masks)
    assert inp.image.shape == (550, 550, 3)
    s = 550 / 64
    # 48*550/64 = 412.5 -> 413: rounded half up, as the model's test-time resize.
    np.testing.assert_allclose(inp.boxes, boxes * [s, 413 / 48, s, 413 / 48])
    np.testing.assert_array_equal(inp.image[413:, :], np.broadcast_to([104, 117, 124], (137, 550, 3)))
    assert inp.masks[:, 413:].sum() == 0
    assert np.abs(_mask_boxes(inp.masks) - inp.boxes).max() <= 1.0


# ----------------------------------------------------------------------------- photometric
def _photometric_oracle(img_bgr, t):
    """Per-pixel colorsys implementation of the official distortion (float, then clip/round)."""
    out = np.empty(img_bgr.shape, np.float64)
    for y in range(img_bgr.shape[0]):
        for x in range(img_bgr.shape[1]):
            b, g, r = img_bgr[y, x].astype(np.float64)
            if t.brightness_delta is not None:
                b, g, r = b + t.brightness_delta, g + t.brightness_delta, r + t.brightness_delta
            if t.contrast_alpha is not None and not t.contrast_last:
                b, g, r = b * t.contrast_alpha, g * t.contrast_alpha, r * t.contrast_alpha
            hh, ss, vv = colorsys.rgb_to_hsv(r, g, b)  # h in [0, 1), v in pixel units
            hh *= 360.0
            if t.saturation_factor is not None:
                ss *= t.saturation_factor
            if t.hue_delta is not None:
                hh += t.hue_delta
                hh = hh - 360 if hh > 360 else hh + 360 if hh < 0 else hh
            r, g, b = colorsys.hsv_to_rgb((hh % 360) / 360.0, ss, vv)
            if t.contrast_alpha is not None and t.contrast_last:
                b, g, r = b * t.contrast_alpha, g * t.contrast_alpha, r * t.contrast_alpha
            out[y, x] = (b, g, r)
    return np.clip(np.rint(out), 0, 255)


@pytest.mark.parametrize("params", [
    dict(brightness_delta=20.0, contrast_alpha=1.3, contrast_last=False, saturation_factor=0.7, hue_delta=10.0),
    dict(brightness_delta=-15.0, contrast_alpha=0.8, contrast_last=True, saturation_factor=1.2, hue_delta=-17.0),
    dict(),
])
def test_photometric_matches_colorsys_oracle(params):
    rng = np.random.default_rng(3)
    img = rng.integers(40, 216, size=(6, 7, 3), dtype=np.uint8)
    t = PhotometricDistortTransform(**params)
    out = t.apply_image(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - _photometric_oracle(img, t)).max() <= 1
    coords = np.array([[1.5, 2.5]])
    np.testing.assert_array_equal(t.apply_coords(coords.copy()), coords)


def test_photometric_sampler_probabilities_and_ranges():
    np.random.seed(0)
    aug = RandomPhotometricDistort()
    img = np.zeros((2, 2, 3), np.uint8)
    ts = [aug.get_transform(img) for _ in range(2000)]
    for name, lo, hi in (("brightness_delta", -32, 32), ("contrast_alpha", 0.5, 1.5),
                         ("saturation_factor", 0.5, 1.5), ("hue_delta", -18, 18)):
        vals = [getattr(t, name) for t in ts if getattr(t, name) is not None]
        assert 0.45 < len(vals) / len(ts) < 0.55, name
        assert lo <= min(vals) and max(vals) <= hi, name
    assert 0.45 < np.mean([t.contrast_last for t in ts]) < 0.55


# ----------------------------------------------------------------------------- full pipeline
@pytest.mark.parametrize("preserve", [False, True])
def test_full_ssd_pipeline_keeps_boxes_and_masks_consistent(preserve):
    image, boxes, masks = _rect_scene()
    is_crowd = np.array([False, True, False])
    augs = build_ssd_augmentation(size=550, preserve_aspect_ratio=preserve)
    for seed in range(15):
        np.random.seed(seed)
        inp, tfm = _run(augs, image, boxes, masks, is_crowd)
        assert isinstance(tfm, TransformList)
        assert inp.image.shape == (550, 550, 3) and inp.image.dtype == np.uint8
        assert inp.masks.shape == (len(inp.boxes), 550, 550)
        assert (~inp.is_crowd).any()
        np.testing.assert_array_equal(inp.is_crowd, is_crowd[inp.indices])
        # Rectangles stay rectangles: the mask's box is the transformed box (resize rounding: 1 px).
        nonempty = inp.masks.reshape(len(inp.masks), -1).any(1)
        assert np.abs(_mask_boxes(inp.masks)[nonempty] - inp.boxes[nonempty]).max() <= 1.0
        # The transform list replays the same geometry on fresh boxes (with the squash resize the
        # final clip to the image equals the crop's clip; the padded variant clips inside).
        if not preserve:
            np.testing.assert_allclose(np.clip(tfm.apply_box(boxes[inp.indices]), 0, 550), inp.boxes, atol=1e-6)


def test_polygons_follow_the_masks():
    """Polygon path vs bitmask path under the same random draws: rasterised polygons agree."""
    h, w = 60, 80
    tri = np.array([[10, 10], [70, 20], [30, 55]], float)
    mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects([tri.ravel().tolist()], h, w)))
    box = np.array([[10, 10, 70, 55]], float)
    image = np.full((h, w, 3), 50, np.uint8)
    augs = build_ssd_augmentation(size=200)
    for seed in range(10):
        np.random.seed(seed)
        a, _ = _run(augs, image, box, mask[None])
        np.random.seed(seed)
        b, _ = _run(augs, image, box, None, polygons=[[tri.copy()]])
        np.testing.assert_allclose(a.boxes, b.boxes)
        assert len(b.polygons[0]) == 1
        poly = b.polygons[0][0].ravel().tolist()
        raster = mask_util.decode(mask_util.merge(mask_util.frPyObjects([poly], 200, 200)))
        inter = (raster & a.masks[0]).sum()
        union = (raster | a.masks[0]).sum()
        assert inter / union > 0.95, (seed, inter / union)


class _Fixed(T.Augmentation):
    """Applies a given transform (to drive InstanceAugInput with hand-made transforms)."""

    def __init__(self, tfm):
        super().__init__()
        self.tfm = tfm

    def get_transform(self, image):
        return self.tfm


def _eager_masks(tfm, masks):
    """Oracle: apply each transform to each (H, W) mask in turn, as the official code does."""
    out = []
    for i in range(len(masks)):
        m = masks[i]
        for t in tfm.transforms:
            if isinstance(t, CV2ResizeTransform):
                m = cv2.resize(m, (t.new_w, t.new_h), interpolation=cv2.INTER_LINEAR)
            else:
                m = t.apply_segmentation(m)
        out.append(m)
    return np.stack(out)


@pytest.mark.parametrize("preserve", [False, True])
def test_deferred_masks_equal_step_by_step_masks(preserve):
    """Masks are resampled once from the source; the official way transforms them step by step."""
    rng = np.random.default_rng(7)
    h, w = 40, 56
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    masks = np.zeros((6, h, w), np.uint8)
    boxes = []
    for i in range(6):
        cx, cy, r = rng.uniform(8, w - 8), rng.uniform(8, h - 8), rng.uniform(4, 10)
        yy, xx = np.mgrid[:h, :w]
        masks[i] = ((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r * r)
        boxes.append([cx - r, cy - r, cx + r, cy + r])
    boxes = np.array(boxes)
    geometric = [RandomExpand(prob=1.0), RandomSampleCrop(), T.RandomFlip(prob=0.5)]
    for seed in range(12):
        # Integer steps only (expand, crop, flip): identical.
        np.random.seed(seed)
        inp, tfm = _run(geometric, image, boxes, masks)
        kept = masks[inp.indices]
        np.testing.assert_array_equal(inp.masks, _eager_masks(tfm, kept))
        # With the final resize: equal but for mask-boundary pixels (warpAffine quantises sampling
        # positions to 1/32 px; cv2.resize does not) and the outer few pixels, where step-by-step
        # resizing replicates the crop's edge while sampling once reads the pixels beyond it.
        np.random.seed(seed)
        inp, tfm = _run(geometric + [YolactResize(120, preserve_aspect_ratio=preserve)], image, boxes, masks)
        eager = _eager_masks(tfm, masks[inp.indices])
        assert inp.masks.shape == eager.shape
        kernel = np.ones((3, 3), np.uint8)
        for i in range(len(eager)):
            e, lazy = eager[i], inp.masks[i]
            band = cv2.dilate(e, kernel) - cv2.erode(e, kernel)
            mismatch = e != lazy
            assert mismatch.sum() <= 0.1 * max(e.sum(), 10), (seed, i)
            interior = np.zeros_like(mismatch)
            interior[8:-8, 8:-8] = True
            assert (mismatch & (band == 0) & interior).sum() == 0, (seed, i)


# Sizes where Python's round (half to even, the old training rule) and the model's int(x + 0.5)
# differ, plus ones where they agree; expected (height, width) computed by hand, rounding half up.
@pytest.mark.parametrize("hw, size, expected", [
    ((50, 256), 64, (13, 64)),  # 50 * 64 / 256 = 12.5
    ((256, 18), 64, (64, 5)),  # 18 * 64 / 256 = 4.5
    ((101, 1100), 550, (51, 550)),  # 50.5
    ((48, 64), 550, (413, 550)),  # 412.5
    ((47, 100), 64, (30, 64)),  # 30.08
    ((64, 64), 64, (64, 64)),
])
def test_aspect_preserving_resize_matches_the_models_test_time_size(hw, size, expected):
    """YolactResize(preserve_aspect_ratio=True) at training and a "shortest_edge" Yolact at test
    time make the same image size."""
    image = np.zeros(hw + (3,), np.uint8)
    tfm = YolactResize(size, preserve_aspect_ratio=True).get_transform(image)
    resized = tfm.transforms[0].apply_image(image)
    assert resized.shape[:2] == expected

    cfg = LazyConfig.load("configs/shapes/yolact_shapes_tiny.py")
    cfg.model.resize_mode = "shortest_edge"
    cfg.model.input_size = size
    model = instantiate(cfg.model).eval()
    images = model.preprocess_image([{"image": torch.from_numpy(image).permute(2, 0, 1)}], resize=True)
    assert tuple(images.image_sizes[0]) == expected
