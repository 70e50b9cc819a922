"""YolactDatasetMapper on a tiny generated shapes dataset: outputs against hand-computed targets,
crowd handling, re-drawing when augmentation leaves nothing, every bad input's error, and a real
Detectron2 train loader yielding batches."""
import copy
import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, PolygonMasks

from yolact_d2.data import AnnotationError, ImageReadError, YolactDatasetMapper, build_ssd_augmentation
from yolact_d2.data.augmentations import InstanceCropTransform, YolactResize
from yolact_d2.data.datasets import register_coco_dataset
from yolact_d2.data.shapes import generate_shapes_dataset, register_shapes

# pycocotools on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("mapper") / "shapes"
    paths = generate_shapes_dataset(root, num_train=12, num_val=4, image_size=64, seed=3, crowd_prob=0.5)
    names = register_shapes(root, prefix="test_mapper_shapes")
    dicts = get_detection_dataset_dicts([names[0]], filter_empty=True)
    return dict(root=root, paths=paths, names=names, dicts=dicts)


def _dict_with(shapes, annotations, **extra):
    d = copy.deepcopy(shapes["dicts"][0])
    d["annotations"] = annotations
    d.update(extra)
    return d


def _ann(bbox, segmentation=None, category_id=1, iscrowd=0, ann_id=77):
    if segmentation is None:
        x0, y0, x1, y1 = bbox
        segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    return dict(bbox=list(bbox), bbox_mode=BoxMode.XYXY_ABS, segmentation=segmentation,
                category_id=category_id, iscrowd=iscrowd, id=ann_id)


# ----------------------------------------------------------------------------- outputs
def test_resize_only_output_matches_hand_computed(shapes):
    mapper = YolactDatasetMapper(True, [YolactResize(550)], num_classes=NUM_CLASSES)
    for d in shapes["dicts"]:
        out = mapper(d)
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 550, 550)
        assert (out["height"], out["width"]) == (64, 64)
        inst = out["instances"]
        assert inst.image_size == (550, 550)
        anns = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
        crowds = [a for a in d["annotations"] if a.get("iscrowd", 0)]
        s = 550 / 64
        expect = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        # the generator keeps every object's box >= 4 px at 64 px, so nothing is discarded here
        np.testing.assert_allclose(inst.gt_boxes.tensor.numpy(), np.array(expect) * s, rtol=1e-5)
        assert inst.gt_classes.tolist() == [a["category_id"] for a in anns]
        assert isinstance(inst.gt_masks, BitMasks) and inst.gt_masks.tensor.dtype == torch.bool
        mask_boxes = inst.gt_masks.get_bounding_boxes().tensor
        assert (mask_boxes - inst.gt_boxes.tensor).abs().max() <= s + 1  # bbox pixels vs edges
        exp_crowd = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in crowds]).reshape(-1, 4)
        np.testing.assert_allclose(out["crowd_boxes"].numpy(), exp_crowd * s, rtol=1e-5)
        assert out["crowd_boxes"].dtype == torch.float32
        # The image is the cv2-resized original.
        import cv2

        img = cv2.imread(d["file_name"])
        np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(),
                                      cv2.resize(img, (550, 550), interpolation=cv2.INTER_LINEAR))
    assert any(len(m["crowd_boxes"]) for m in map(mapper, shapes["dicts"])), "fixture lacks crowds"


def test_ssd_mapper_outputs_and_polygon_mode(shapes):
    np.random.seed(0)
    bit = YolactDatasetMapper(True, build_ssd_augmentation(size=160), num_classes=NUM_CLASSES)
    poly = YolactDatasetMapper(True, build_ssd_augmentation(size=160), mask_format="polygon",
                               num_classes=NUM_CLASSES)
    polygon_only = [d for d in shapes["dicts"]
                    if all(isinstance(a["segmentation"], list) or a["iscrowd"] for a in d["annotations"])]
    assert polygon_only
    for d in shapes["dicts"]:
        out = bit(d)
        assert out["image"].shape == (3, 160, 160) and len(out["instances"]) > 0
        b = out["instances"].gt_boxes.tensor
        assert ((b[:, 2:] - b[:, :2]) > 4 / 550 * 160).all()
    for seed, d in enumerate(polygon_only):
        np.random.seed(seed)
        a = bit(d)
        np.random.seed(seed)
        p = poly(d)
        assert isinstance(p["instances"].gt_masks, PolygonMasks)
        torch.testing.assert_close(a["instances"].gt_boxes.tensor, p["instances"].gt_boxes.tensor)
        raster = BitMasks.from_polygon_masks(p["instances"].gt_masks, 160, 160).tensor
        bm = a["instances"].gt_masks.tensor
        iou = (raster & bm).sum((1, 2)).float() / (raster | bm).sum((1, 2)).clamp(min=1).float()
        assert (iou > 0.8).all(), iou


def test_test_mode_keeps_original_size(shapes):
    d = shapes["dicts"][0]
    out = YolactDatasetMapper(is_train=False)(d)
    assert out["image"].shape == (3, 64, 64) and "instances" not in out and "annotations" not in out


def test_crowd_separated_and_box_clipping(shapes):
    d = _dict_with(shapes, [
        _ann([10, 10, 30, 30], category_id=2, ann_id=1),
        _ann([-10, 40, 20, 80], category_id=1, ann_id=2),  # partly outside: clipped to (0,40,20,64)
        _ann([70, 70, 90, 90], ann_id=3),                   # entirely outside: dropped
        _ann([40, 5, 60, 25], iscrowd=1, category_id=3, ann_id=4),
    ])
    out = YolactDatasetMapper(True, [YolactResize(128)], num_classes=NUM_CLASSES)(d)
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy(),
                               [[20, 20, 60, 60], [0, 80, 40, 128]])
    assert out["instances"].gt_classes.tolist() == [2, 1]
    np.testing.assert_allclose(out["crowd_boxes"].numpy(), [[80, 10, 120, 50]])


# ----------------------------------------------------------------------------- nothing left
def test_no_instance_left_returns_none_after_redraws(shapes, caplog):
    tiny = _dict_with(shapes, [_ann([10, 10, 10.1, 30], ann_id=5)])  # 0.1 px wide: < 4/550 of the side even after a 3x crop zoom
    crowd_only = _dict_with(shapes, [_ann([10, 10, 40, 40], iscrowd=1, ann_id=6)])
    mapper = YolactDatasetMapper(True, build_ssd_augmentation(size=128), num_classes=NUM_CLASSES,
                                 max_retries=3)
    with caplog.at_level(logging.WARNING):
        assert mapper(tiny) is None
        assert mapper(crowd_only) is None
    assert "no non-crowd instance survives augmentation" in caplog.text


class _DropAllFirst(T.Augmentation):
    """A crop that keeps no instance for its first `n` calls, then does nothing."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.calls = 0

    def get_transform(self, image, boxes):
        self.calls += 1
        if self.calls <= self.n:
            h, w = image.shape[:2]
            return InstanceCropTransform(0, 0, w, h, w, h, keep=np.zeros(len(boxes), bool))
        return T.NoOpTransform()


def test_redraws_augmentation_when_everything_is_dropped(shapes):
    aug = _DropAllFirst(2)
    mapper = YolactDatasetMapper(True, [aug, YolactResize(64)], num_classes=NUM_CLASSES)
    d = shapes["dicts"][0]
    out = mapper(d)
    assert out is not None and aug.calls == 3
    assert len(out["instances"]) == sum(1 for a in d["annotations"] if not a["iscrowd"])
    # Past max_retries, one last try uses only the resize: still an image with its instances.
    aug2 = _DropAllFirst(100)
    out2 = YolactDatasetMapper(True, [aug2, YolactResize(64)], max_retries=4)(d)
    assert out2 is not None and aug2.calls == 5


# ----------------------------------------------------------------------------- bad input
def test_missing_image_file(shapes):
    d = _dict_with(shapes, shapes["dicts"][0]["annotations"], file_name="/nonexistent/dir/img_42.png")
    with pytest.raises(ImageReadError, match="img_42.png"):
        YolactDatasetMapper(True, [YolactResize(64)])(d)


def test_corrupt_image_file(shapes, tmp_path):
    bad = tmp_path / "broken.png"
    with open(shapes["dicts"][0]["file_name"], "rb") as f:
        bad.write_bytes(f.read()[:60])  # truncated PNG
    d = _dict_with(shapes, shapes["dicts"][0]["annotations"], file_name=str(bad))
    with pytest.raises(ImageReadError, match="broken.png"):
        YolactDatasetMapper(True, [YolactResize(64)])(d)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    d["file_name"] = str(junk)
    with pytest.raises(ImageReadError, match="junk.jpg.*corrupt"):
        YolactDatasetMapper(False)(d)


@pytest.mark.parametrize("segmentation, message", [
    ([[10, 10, 20, 10, 20]], "odd number of coordinates"),
    ([[10, 10, 20, 10]], "2 points; a polygon needs at least 3"),
    (None, "no 'segmentation'"),
    ({"size": [32, 32], "counts": "abc"}, r"RLE size \[32, 32\] does not match"),
    # Detectron2's loader hands compressed RLE on as bytes; pycocotools would decode these into garbage.
    ({"size": [64, 64], "counts": b"zzzz"}, r"corrupt RLE: .*not a valid compressed RLE string"),
    ({"size": [64, 64], "counts": b"P1"}, r"corrupt RLE: its run lengths cover 32 pixels, but its size 64x64 has 4096"),  # P: 0 + more, 1: 1 << 5
])
def test_invalid_masks(shapes, segmentation, message):
    ann = _ann([10, 10, 20, 20], ann_id=1234)
    ann["segmentation"] = segmentation
    d = _dict_with(shapes, [ann])
    name = os.path.basename(d["file_name"])
    with pytest.raises(AnnotationError, match=rf"{name}.*annotation id=1234.*{message}"):
        YolactDatasetMapper(True, [YolactResize(64)], num_classes=NUM_CLASSES)(d)


def test_image_size_differs_from_the_annotations(shapes):
    d = _dict_with(shapes, shapes["dicts"][0]["annotations"], height=60)
    name = os.path.basename(d["file_name"])
    for is_train in (True, False):
        with pytest.raises(ImageReadError, match=rf"{name}.*is 64x64 \(height x width\) but its annotations "
                                                  r"say height=60, width=64"):
            YolactDatasetMapper(is_train, [YolactResize(64)])(d)


def _runs_brute_force(mask):
    """Alternating run lengths (zeros first) of a mask in column-major order: the RLE definition."""
    flat = mask.flatten(order="F")
    runs, value, n = [], 0, 0
    for v in flat:
        if v == value:
            n += 1
        else:
            runs.append(n)
            value, n = v, 1
    return runs + [n]


def test_compressed_rle_run_lengths_match_the_mask():
    from yolact_d2.data.mapper import _compressed_run_lengths

    rng = np.random.default_rng(0)
    for trial in range(30):
        h, w = rng.integers(1, 80, size=2)
        mask = (rng.random((h, w)) < rng.choice([0.02, 0.5, 0.98])).astype(np.uint8)
        if trial % 3 == 0:  # long runs: multi-group and negative-delta encodings
            mask[:, : w // 2] = trial % 2
        counts = mask_util.encode(np.asfortranarray(mask))["counts"].decode()
        assert _compressed_run_lengths(counts) == _runs_brute_force(mask)


def test_category_not_in_dataset(shapes):
    d = _dict_with(shapes, [_ann([10, 10, 20, 20], category_id=7, ann_id=99)])
    with pytest.raises(AnnotationError, match=r"annotation id=99: category_id 7 is not in the dataset.*0\.\.3"):
        YolactDatasetMapper(True, [YolactResize(64)], num_classes=NUM_CLASSES)(d)
    d = _dict_with(shapes, [_ann([10, 10, 20, 20], category_id=-1, ann_id=98)])
    with pytest.raises(AnnotationError, match="category_id -1"):
        YolactDatasetMapper(True, [YolactResize(64)])(d)


def test_rle_with_polygon_mask_format(shapes):
    rle = mask_util.encode(np.asfortranarray(np.ones((64, 64), np.uint8)))
    rle["counts"] = rle["counts"].decode()
    d = _dict_with(shapes, [_ann([0, 0, 64, 64], segmentation=rle, ann_id=5)])
    with pytest.raises(AnnotationError, match="mask_format='bitmask'"):
        YolactDatasetMapper(True, [YolactResize(64)], mask_format="polygon")(d)


def _write_json(tmp_path, shapes, mutate):
    with open(shapes["paths"]["train"][0]) as f:
        coco = json.load(f)
    mutate(coco)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(coco))
    return str(path)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["annotations"][0].update(category_id=9), r"category_id 9 is not in the dataset's categories"),
    (lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5]]), "odd number of coordinates"),
    (lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), "2 points"),
])
def test_registered_coco_json_is_checked(shapes, tmp_path, mutate, message):
    json_file = _write_json(tmp_path, shapes, mutate)
    name = register_coco_dataset(f"test_bad_{abs(hash(message))}", json_file, shapes["paths"]["train"][1])
    with pytest.raises(AnnotationError, match=rf"000001.png.*annotation id=1: .*{message}"):
        DatasetCatalog.get(name)
    DatasetCatalog.remove(name)


def test_registered_coco_json_loads_when_valid(shapes):
    json_file, image_root = shapes["paths"]["val"]
    name = register_coco_dataset("test_ok_register", json_file, image_root)
    assert register_coco_dataset("test_ok_register", json_file, image_root) == name  # idempotent
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 4 and all("id" in a for d in dicts for a in d["annotations"])


# ----------------------------------------------------------------------------- loader
@pytest.mark.parametrize("num_workers", [0, 2])
def test_detectron2_train_loader_yields_batches(shapes, num_workers):
    mapper = YolactDatasetMapper(True, build_ssd_augmentation(size=96), num_classes=NUM_CLASSES)
    loader = build_detection_train_loader(dataset=shapes["dicts"], mapper=mapper, total_batch_size=4,
                                          num_workers=num_workers)
    it = iter(loader)
    for _ in range(3):
        batch = next(it)
        assert len(batch) == 4
        for x in batch:
            assert x["image"].shape == (3, 96, 96) and len(x["instances"]) > 0
            assert x["instances"].gt_masks.tensor.shape[1:] == (96, 96)
            assert x["crowd_boxes"].shape[1] == 4


def _mapdataset_samples_from_a_set():
    import inspect
    import sys

    from detectron2.data.common import MapDataset

    src = inspect.getsource(MapDataset.__getitem__)
    return sys.version_info >= (3, 11) and "sample(self._fallback_candidates" in src


@pytest.mark.skipif(_mapdataset_samples_from_a_set(), reason=(
    "Detectron2 v0.6 MapDataset calls random.sample() on a set, a TypeError on Python >= 3.11, so "
    "it cannot substitute an image the mapper returns None for; fix in the wheel build: "
    "sample(sorted(self._fallback_candidates), k=1). yolact_d2's resumable loader is unaffected."))
def test_detectron2_loader_substitutes_an_image_the_mapper_rejects(shapes):
    rejected = _dict_with(shapes, [_ann([10, 10, 10.1, 30], ann_id=5)])  # nothing survives
    mapper = YolactDatasetMapper(True, build_ssd_augmentation(size=64), num_classes=NUM_CLASSES, max_retries=0)
    loader = build_detection_train_loader(dataset=[rejected] + shapes["dicts"][:3], mapper=mapper,
                                          total_batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert all(len(x["instances"]) > 0 for x in batch)


def test_mapper_is_a_function_of_the_numpy_seed(shapes):
    """Resumable data streams re-seed numpy per sample: the same seed must give the same sample."""
    mapper = YolactDatasetMapper(True, build_ssd_augmentation(size=96), num_classes=NUM_CLASSES)
    outs = []
    for _ in range(2):
        np.random.seed(123)
        outs.append([mapper(d) for d in shapes["dicts"][:4]])
    for a, b in zip(*outs):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
        assert torch.equal(a["instances"].gt_masks.tensor, b["instances"].gt_masks.tensor)
        assert torch.equal(a["crowd_boxes"], b["crowd_boxes"])


def test_uncompressed_and_compressed_rle_masks(shapes):
    """COCO crowd regions come as uncompressed RLE (list counts); both kinds decode to the mask."""
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 4:40] = 1
    counts, value, run = [], 0, 0  # alternating run lengths, column-major, starting with zeros
    for v in mask.flatten(order="F"):
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    uncompressed = {"size": [64, 64], "counts": counts}
    assert (mask_util.decode(mask_util.frPyObjects(uncompressed, 64, 64)) == mask).all()
    compressed = mask_util.encode(np.asfortranarray(mask))
    compressed["counts"] = compressed["counts"].decode()
    d = _dict_with(shapes, [_ann([4, 8, 40, 24], segmentation=uncompressed, ann_id=1),
                            _ann([4, 8, 40, 24], segmentation=compressed, ann_id=2)])
    out = YolactDatasetMapper(True, [YolactResize(64)], num_classes=NUM_CLASSES)(d)
    m = out["instances"].gt_masks.tensor.numpy()
    assert m.shape == (2, 64, 64) and (m[0] == mask).all() and (m[1] == mask).all()
